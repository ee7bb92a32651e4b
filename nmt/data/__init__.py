"""Parallel text: `sources` finds the splits `data.dataset` names (`text` files or the `hub`), `streams`
reads the training split in chunks, `prepare` turns the splits into the model's ids."""
