"""specnorm: spectrogram and waveform normalization for fastai audio pipelines."""

__version__ = "0.1.0"
