"""`from specnorm.all import *`: the public API, fastai style (code written for fastaudio runs with this import)."""
from .audio import *
from .config import *
from .spectrogram import *
from .signal import *
from .data import *
from .cache import *
from .stats import *
from .normalize import *
from .drift import *
from .instance import *
from .sliding import *
from .pcen import *
from .synth import *
from .experiment import *
