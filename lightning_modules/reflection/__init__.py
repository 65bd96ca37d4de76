"""Visual reflection (Reflection-V style, issue #15): measures of how much a VLM's output relies on the image."""
