"""Image editors behind one interface: edit an image so that it matches a (negative) caption."""
