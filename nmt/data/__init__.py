"""Parallel text: `sources` reads a hub dataset, a local folder in a hub dataset's layout or `{split}.{lang}`
text files and filters pairs; `prepare` turns the configured splits into the model's ids."""
