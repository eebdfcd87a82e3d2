"""Sub-commands of the `frameprompt` CLI; see `frameprompt.cli`."""
