"""nmt: LSTM encoder-decoder with Luong attention, trained with SGD and gradient-norm clipping."""

__version__ = "0.1.0"
