"""Bundle conventions of the SAMAug segmentation configs: properties, presets, network checks, channel checks."""

import json
import logging

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from bundle.data.labels import DATASETS
from bundle.priors.cache import CachedSamPriord, PriorCache
from workflow_utils import (
    CONFIGS,
    EVALUATE,
    INFERENCE,
    METADATA,
    NETWORK,
    PRECOMPUTE,
    PRESET_NAMES,
    PRESETS,
    SAM_PRIORS,
    TRAIN,
    TINY,
    config_files,
    infer,
)


def _parser(files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files)
    parser.read_meta(METADATA)
    parser.update(overrides)
    return parser


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _workflow(files, workflow_type, data, work, caplog, **overrides):
    caplog.set_level(logging.WARNING)
    workflow = ConfigWorkflow(config_file=files, workflow_type=workflow_type, meta_file=METADATA, logging_file=False,
                              **{**TINY, **data.overrides(work), **overrides})
    workflow.initialize()
    return workflow


@pytest.mark.parametrize("preset", [None, *PRESET_NAMES])
def test_train_and_infer_properties(preset, phantom_set, tmp_path, caplog):
    data = phantom_set(preset or "brats")
    train = _workflow(config_files(preset), "train", data, tmp_path, caplog)
    assert train.check_properties() == []
    evaluate = _workflow(config_files(preset, EVALUATE), "train", data, tmp_path, caplog)
    assert evaluate.check_properties() == []
    inference = _workflow(config_files(preset, main=INFERENCE), "infer", data, tmp_path, caplog, **NETWORK)
    assert inference.check_properties() == []
    # no "optional property ... not found" warnings either (MONAI Label reads several of them)
    assert not [r for r in caplog.records if "property" in r.getMessage().lower()]


@pytest.mark.parametrize("preset", [None, *PRESET_NAMES])
def test_every_workflow_reads_one_prior_cache_partition(preset):
    """Precompute, training, evaluation and inference merge configs/sam_priors.json: one signature, one partition."""
    caches = {}
    for name, files in {
        "precompute": config_files(preset, main=PRECOMPUTE),
        "training": config_files(preset),
        "evaluation": config_files(preset, EVALUATE),
        "inference": config_files(preset, main=INFERENCE),
    }.items():
        parser = _parser(files)
        cache = PriorCache(parser.get_parsed_content("prior_cache_dir"), parser.get_parsed_content("sam_prior").signature())
        caches[name] = (str(cache.cache_dir), cache.digest)
        assert not parser.get_parsed_content("mask_generator").engine.loaded  # the signature needs no SAM
    assert len(set(caches.values())) == 1, caches
    assert "lite_medsam" in caches["training"][0]


def test_sam_settings_have_one_home():
    """No workflow config repeats a key of the shared SAM/prior file (only ``use_priors`` is derived per workflow; the
    classification training derives ``prior_kinds`` from its augmentation mode, and its self-contained inference
    config rebuilds the prior transform from the model card, never from settings of its own)."""
    shared = set(json.load(open(SAM_PRIORS))) - {"use_priors"}
    others = (str(CONFIGS / "evaluate_cls.json"), str(CONFIGS / "train_weak.json"))
    for name in (TRAIN, EVALUATE, INFERENCE, PRECOMPUTE, *others):
        assert not shared & set(json.load(open(name))), name
    assert shared & set(json.load(open(CONFIGS / "train_samaug_cls.json"))) == {"prior_kinds"}
    inference_cls = json.load(open(CONFIGS / "inference_cls.json"))
    assert not (shared - {"prior_kinds", "sam_prior", "prior_cache_dir"}) & set(inference_cls)
    assert "card" in inference_cls["sam_prior"] and "card" in inference_cls["prior_kinds"]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_match_dataset_specs(preset):
    config = json.load(open(PRESETS[preset]))
    spec = DATASETS[config["dataset_name"]]
    assert {k: tuple(v) for k, v in config["regions"].items()} == dict(spec.regions)
    assert len(config["image_channel_names"]) == len(spec.modalities)
    # presets only set keys that both the training and the inference run define
    shared = set(json.load(open(SAM_PRIORS)))
    train, inference = json.load(open(TRAIN)), json.load(open(INFERENCE))
    assert set(config) <= (set(train) | shared) & (set(inference) | shared)


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("prior_mode, spatial_dims", [("none", 2), ("channels", 3)])
def test_flags_switch_components(preset, prior_mode, spatial_dims):
    """``prior_mode none`` builds no mask generator and no prior transform; ``spatial_dims`` picks net and inferer."""
    if preset == "brats" and prior_mode == "channels":
        prior_mode = "concat"  # add / channels need a single-channel image
    # a SAM checkpoint that does not exist: building any SAM for the raw baseline would fail
    missing_sam = {"sam_checkpoint": "/nonexistent/sam.pth"} if prior_mode == "none" else {}
    parser = _parser(config_files(preset), prior_mode=prior_mode, spatial_dims=spatial_dims, **missing_sam)
    transforms = parser.get_parsed_content("prior_transforms")
    if prior_mode == "none":
        assert transforms == [] and parser.get_parsed_content("mask_generator") is None
        assert parser.get_parsed_content("all_keys") == ["image", "label"]
    else:
        assert isinstance(transforms[0], CachedSamPriord)
    net = parser.get_parsed_content("network_def")
    channels = len(parser.get_parsed_content("input_channel_names"))
    x = torch.rand(1, channels, *([16] * spatial_dims))
    assert net(x).shape == (1, len(parser.get_parsed_content("regions")), *([16] * spatial_dims))
    inferer = parser.get_parsed_content("validate#volume_inferer")
    assert type(inferer).__name__ == ("SliceInferer" if spatial_dims == 2 else "SlidingWindowInferer")


def test_verify_net_in_out_and_export(tmp_path):
    verify_net_in_out("network_def", meta_file=METADATA, config_file=INFERENCE)
    parser = _parser(INFERENCE)
    ckpt = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt), meta_file=METADATA,
                config_file=INFERENCE)
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    meta = json.load(open(METADATA))["network_data_format"]
    image = meta["inputs"]["image"]
    out = scripted(torch.rand(1, image["num_channels"], *([16] * len(image["spatial_shape"]))))
    assert out.shape[1] == meta["outputs"]["pred"]["num_channels"]


def test_metadata_describes_default_network():
    parser = _parser(INFERENCE)
    image = json.load(open(METADATA))["network_data_format"]["inputs"]["image"]
    names = parser.get_parsed_content("input_channel_names")
    assert image["num_channels"] == len(names) == 6
    assert len(image["spatial_shape"]) == parser.get_parsed_content("spatial_dims")
    assert [image["channel_def"][str(i)] for i in range(4)] == parser.get_parsed_content("image_channel_names")


@pytest.mark.parametrize(
    "trained_mode, run_mode, found, expected",
    [("none", "concat", 4, "6 [FLAIR, T1, T1ce, T2, sam_seg_prior, sam_boundary_prior]"),
     ("concat", "none", 6, "4 [FLAIR, T1, T1ce, T2]")],
)
def test_channel_mismatch_is_explained(trained_mode, run_mode, found, expected, phantom_set, tmp_path):
    """A model trained with priors run without them (or the reverse) fails naming both channel layouts."""
    data = phantom_set("brats")
    trained = _parser(INFERENCE, **NETWORK, prior_mode=trained_mode).get_parsed_content("network_def")
    (tmp_path / "models").mkdir()
    torch.save(trained.state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(RuntimeError) as err:  # MONAI's config runner wraps the handler's ValueError
        infer(data, tmp_path, prior_mode=run_mode)
    message = str(_root_cause(err.value))
    assert f"trained with {found} input channels" in message
    assert f"builds {expected}" in message
    assert f"prior_mode={run_mode}" in message
    assert not (tmp_path / "predictions").exists()
