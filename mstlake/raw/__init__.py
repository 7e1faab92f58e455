"""Raw frames: reading what a camera wrote and taking inventory of it."""
