"""Files: model specifications and downloads, atomic writes, extraction in parts."""
