"""One module per ``sam-unet`` sub-command (see sam_unet.cli.COMMANDS)."""
