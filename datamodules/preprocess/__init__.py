"""Raw-data preprocessing: validate, caption lone images, draw lone texts, gate every pair, repair failures."""
