"""The data engine's stages: assisted-manual, semi-automatic and fully automatic."""
