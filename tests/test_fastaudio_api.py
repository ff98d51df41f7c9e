"""fastaudio 1.0.2's public names, as its users call them: spectrogram factories, configs, blocks, files,
silence removal and preprocessing."""

import numpy as np
import pytest
import torch
import torchaudio.transforms as T
from conftest import tone, write_audio
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.external import URLs
from fastai.data.transforms import parent_label

import specnorm.all as sa
from specnorm.all import (
    AudioBlock,
    AudioConfig,
    AudioGetter,
    AudioTensor,
    AudioToSpec,
    OpenAudio,
    PreprocessAudio,
    RemoveSilence,
    RemoveType,
    SpectrogramTransformer,
    audio_extensions,
    config_from_func,
    get_audio_files,
    nonsilent_intervals,
)

# Every public name of fastaudio 1.0.2 that specnorm provides (README, "Coming from fastaudio").
FASTAUDIO_NAMES = """
region_mask mask_along_axis_ random_mask NoiseColor colored_noise add_noise_ RemoveType RemoveSilence Resample
AudioPadType ResizeSignal shift_signal SignalShifter AddNoise AddNoiseGPU ChangeVolume ChangeVolumeGPU SignalCutout
SignalCutoutGPU SignalLoss SignalLossGPU DownmixMono SpectrogramTransform CropTime MaskFreq MaskTime MaskFreqGPU
MaskTimeGPU SGRoll Delta DeltaGPU TfmResize TfmResizeGPU audio_item_tfms PreprocessAudio preprocess_audio_folder
AudioBlock config_from_func AudioConfig audio_extensions get_audio_files AudioGetter AudioTensor show_audio_signal
show_batch OpenAudio AudioSpectrogram show_spectrogram AudioToSpec SpectrogramTransformer get_usable_kwargs
AudioToMFCC create_sin_wave test_audio_tensor apply_transform auto_batch
""".split()


def test_every_fastaudio_name_is_in_specnorm_all():
    missing = [n for n in FASTAUDIO_NAMES if not hasattr(sa, n)]
    assert not missing


def test_spectrogram_transformer_has_fastaudio_defaults_and_torchaudio_values():
    audio = AudioTensor(torch.randn(1, 32000), sr=16000)
    sg = SpectrogramTransformer(mel=True, to_db=True)(f_max=8000, n_mels=64)(audio)
    assert (sg.n_fft, sg.win_length, sg.hop_length) == (1024, 1024, 512)
    assert sg.shape == (1, 64, 32000 // 512 + 1) and sg.mel and sg.to_db
    ref = T.AmplitudeToDB()(T.MelSpectrogram(16000, n_fft=1024, hop_length=512, f_max=8000, n_mels=64)(audio.data))
    assert torch.allclose(sg.as_subclass(torch.Tensor), ref, atol=1e-4)
    lin = SpectrogramTransformer(mel=False, to_db=False)(n_fft=256)(audio)
    assert lin.shape == (1, 129, 32000 // 128 + 1) and not lin.to_db


def test_audio_to_spec_takes_dict_configs_and_routes_fastaudio_arguments():
    audio = AudioTensor(torch.randn(1, 16000), sr=16000)
    sg = AudioToSpec.from_cfg({"mel": False, "to_db": False, "hop_length": 128, "n_fft": 400})(audio)
    assert sg.hop_length == 128 and sg.shape == (1, 201, 16000 // 128 + 1)
    # fastaudio's configs hand a linear spectrogram mel arguments too: ignored, with a warning naming them.
    with pytest.warns(UserWarning, match="n_mels"):
        a2s = AudioToSpec(mel=False, n_fft=400, n_mels=64, top_db=40, stype="power")
    out = a2s(audio).as_subclass(torch.Tensor)
    assert (out.amax((-2, -1)) - out.amin((-2, -1))).item() <= 40 + 1e-4  # top_db reached AmplitudeToDB
    mel = AudioToSpec.from_cfg(AudioConfig.BasicMelSpectrogram(n_mels=32))(audio)
    assert mel.settings["n_mels"] == 32 and mel.settings["sr"] == 16000


def test_config_from_func_fields_follow_the_signature():
    Cfg = config_from_func(T.MelSpectrogram, "Cfg", mel=True, n_mels=40)
    cfg = Cfg()
    assert cfg.n_mels == 40 and cfg.n_fft == 400 and cfg.mel is True and Cfg.__name__ == "Cfg"
    assert AudioToSpec.from_cfg(cfg)(AudioTensor(torch.randn(1, 16000), sr=16000)).shape == (1, 40, 81)


def _folder(tmp_path):
    for label, freq in (("low", 300), ("high", 2000)):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for i in range(3):
            write_audio(tmp_path / "clips" / label / f"{i}.{'wav' if i else 'flac'}", tone(freq, 22050, 0.5), 22050)
    (tmp_path / "clips" / "notes.txt").write_text("not audio")
    return tmp_path / "clips"


def test_audio_files_getter_and_open_audio(tmp_path):
    path = _folder(tmp_path)
    assert {".wav", ".flac", ".ogg", ".mp3"} <= set(audio_extensions)
    files = get_audio_files(path)
    assert len(files) == 6 and all(f.suffix in (".wav", ".flac") for f in files)
    assert len(get_audio_files(path, folders=["low"])) == 3
    assert sorted(AudioGetter("low")(path)) == sorted(get_audio_files(path / "low"))
    oa = OpenAudio(sorted(files))
    item = oa(0)
    assert torch.equal(oa(np.int64(0)), item)
    assert isinstance(item, AudioTensor) and item.sr == 22050 and item.shape == (1, 11025)
    assert oa.decode(0) == sorted(files)[0]


def test_dataset_urls_are_added_to_fastai():
    assert URLs.ESC50.endswith(".zip") and URLs.SPEAKERS10.endswith(".tgz") and "10_Speakers" in URLs.SAMPLE_SPEAKERS10


class _MyBlock(AudioBlock):
    pass


def test_audio_block_is_a_subclassable_class_for_datablocks(tmp_path):
    path = _folder(tmp_path)
    block = _MyBlock(sample_rate=8000, crop_signal_to=250)
    assert isinstance(block, AudioBlock) and isinstance(block, TransformBlock)
    dblock = DataBlock(blocks=(AudioBlock, CategoryBlock), get_items=get_audio_files, get_y=parent_label)
    x, _ = dblock.datasets(path)[0]
    assert isinstance(x, AudioTensor) and x.sr == 22050  # the class itself works as a block: its defaults
    assert [getattr(t, "sr", None) for t in dblock.item_tfms if type(t).__name__ == "Resample"] == [16000]
    dls = DataBlock(blocks=(block, CategoryBlock), get_items=get_audio_files, get_y=parent_label).dataloaders(
        path, bs=2, num_workers=0
    )
    xb, _ = dls.one_batch()
    assert xb.shape == (2, 1, 2000) and xb.sr == 8000


def test_audio_block_from_folder_fills_the_cache_beside_the_folder(tmp_path):
    path = _folder(tmp_path)
    block = AudioBlock.from_folder(path, sample_rate=8000, progress=False)
    cache = tmp_path / "clips_cached"
    assert cache.is_dir() and len(list(cache.rglob("*.npy"))) == 6
    fn = get_audio_files(path)[0]
    direct = PreprocessAudio(sample_rate=8000)(fn)
    cached = block.type_tfms[0](fn)
    assert torch.allclose(cached, direct, atol=1e-6) and cached.sr == 8000


def test_preprocess_audio_applies_the_block_transforms(tmp_path):
    fn = write_audio(tmp_path / "a.wav", tone(440, 44100, 1.0, channels=2), 44100)
    out = PreprocessAudio(sample_rate=16000, crop_signal_to=500)(fn)
    assert out.shape == (1, 8000) and out.sr == 16000


def _clip_with_gaps(sr=16000):
    "Silence 0.3 s, tone 0.5 s, silence 0.4 s, tone 0.3 s, silence 0.2 s: sound at [0.3, 0.8) and [1.2, 1.5)."
    parts = [np.zeros(int(0.3 * sr)), tone(500, sr, 0.5)[0], np.zeros(int(0.4 * sr)), tone(800, sr, 0.3)[0]]
    x = np.concatenate(parts + [np.zeros(int(0.2 * sr))]).astype(np.float32)
    x += 1e-5 * np.random.default_rng(0).standard_normal(len(x)).astype(np.float32)  # -100 dB floor, not exact 0
    return AudioTensor(torch.from_numpy(x), sr=sr)


def test_remove_silence_finds_the_known_silent_spans():
    audio, sr = _clip_with_gaps(), 16000
    hop = pad = int(0.02 * sr)
    spans = nonsilent_intervals(audio.as_subclass(torch.Tensor), 20, hop).tolist()
    assert len(spans) == 2
    for (lo, hi), (t0, t1) in zip(spans, [(0.3, 0.8), (1.2, 1.5)]):
        assert abs(lo - t0 * sr) <= hop // 2 and abs(hi - t1 * sr) <= hop // 2
    trimmed = RemoveSilence(RemoveType.Trim, threshold=20, pad_ms=20)(audio)
    assert abs(trimmed.nsamples - (1.2 * sr + 2 * pad)) <= hop
    assert torch.equal(trimmed, audio[..., spans[0][0] - pad : spans[-1][1] + pad])
    for kind in (RemoveType.All, "split"):
        joined = RemoveSilence(kind, threshold=20, pad_ms=20)(audio)
        assert abs(joined.nsamples - (0.8 * sr + 4 * pad)) <= 2 * hop
    assert RemoveSilence(None)(audio) is audio


def test_remove_silence_keeps_clips_without_silence_and_rejects_batches():
    steady = AudioTensor(torch.ones(1, 16000), sr=16000)
    for kind in RemoveType:
        assert RemoveSilence(kind)(steady).nsamples == 16000
    with pytest.raises(ValueError, match="remove_type"):
        RemoveSilence("everything")
    with pytest.raises(ValueError, match=r"\(2, 1, 16000\)"):
        RemoveSilence()(AudioTensor(torch.ones(2, 1, 16000), sr=16000))
