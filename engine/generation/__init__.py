"""Generation jobs: the automatic mask generator over a pile of images on Ray, written as an
SA-1B dataset with exact resume (`saengine generate`)."""
