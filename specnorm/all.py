"""`from specnorm.all import *`: the public API, fastai style (code written for fastaudio runs with this import)."""

from .audio import *
from .cache import *
from .config import *
from .data import *
from .drift import *
from .experiment import *
from .instance import *
from .loader import *
from .normalize import *
from .pcen import *
from .signal import *
from .sliding import *
from .spectrogram import *
from .stats import *
from .store import *
from .synth import *
