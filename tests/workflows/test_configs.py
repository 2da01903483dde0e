"""Bundle conventions of the SAMAug segmentation configs: properties, presets, network checks, channel checks."""

import dataclasses
import json
import logging

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from bundle.data.labels import DATASETS
from bundle.errors import error_line
from bundle.priors.cache import CachedSamPriord, PriorCache
from bundle.priors.settings import PriorSettings
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
    evaluate,
    infer,
    untrained_model,
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
    # inference.json runs alone: the model folder's card says everything
    folder = untrained_model(tmp_path / "untrained", preset)
    inference = ConfigWorkflow(config_file=INFERENCE, workflow_type="infer", meta_file=METADATA, logging_file=False,
                               model_dir=str(folder), dataset_dir=str(data.root), datalist=str(data.datalist),
                               output_dir=str(tmp_path / "predictions"))
    inference.initialize()
    assert inference.check_properties() == []
    # no "optional property ... not found" warnings either (MONAI Label reads several of them)
    assert not [r for r in caplog.records if "property" in r.getMessage().lower()]


def test_contract_checks_compute_no_prior(phantom_set, tmp_path, caplog):
    """Building the training workflow and checking its properties (MONAI's check_properties instantiates every
    property, datasets included) computes no SAM prior; the ``training`` run computes them before the trainer starts."""
    data = phantom_set("brats")
    train = _workflow(config_files(None), "train", data, tmp_path, caplog)
    assert train.check_properties() == []
    assert not train.train_dataset.filled and not list((tmp_path / "priors").rglob("entry.json"))
    train.run()
    assert train.train_dataset.filled and len(list((tmp_path / "priors").rglob("entry.json"))) == 3  # 2 + 1 cases


@pytest.mark.parametrize("preset", [None, *PRESET_NAMES])
def test_every_workflow_reads_one_prior_cache_partition(preset, tmp_path):
    """Precompute, training and evaluation merge configs/sam_priors.json, inference rebuilds the priors from the model
    card: one signature, one partition."""
    caches = {}
    for name, files in {
        "precompute": config_files(preset, main=PRECOMPUTE),
        "training": config_files(preset),
        "evaluation": config_files(preset, EVALUATE),
    }.items():
        parser = _parser(files)
        cache = PriorCache(parser.get_parsed_content("prior_cache_dir"), parser.get_parsed_content("sam_prior").signature())
        caches[name] = (str(cache.cache_dir), cache.digest)
        assert not parser.get_parsed_content("mask_generator").engine.loaded  # the signature needs no SAM
    assert len(set(caches.values())) == 1, caches
    assert "lite_medsam" in caches["training"][0]
    folder = untrained_model(tmp_path, preset, **{"priors#sam_model_type": "lite_medsam"})
    inference = _parser(INFERENCE, model_dir=str(folder))
    prior = inference.get_parsed_content("sam_prior")
    assert PriorCache(str(tmp_path / "cache"), prior.signature()).digest == caches["training"][1]
    assert not prior.generator.engine.loaded


def _dicts(value, where=""):
    if isinstance(value, dict):
        yield where, value
        for key, item in value.items():
            yield from _dicts(item, f"{where}#{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _dicts(item, f"{where}#{i}")


def test_sam_settings_have_one_home():
    """The SAM prior settings are one block of configs/sam_priors.json, the defaults of PriorSettings: no config
    repeats one of them (as an id or inside another dict), and the presets and SAMAug-C set them inside the block."""
    fields = {f.name for f in dataclasses.fields(PriorSettings)}
    shared = json.load(open(SAM_PRIORS))
    assert shared["priors"] == PriorSettings().to_config()
    assert not fields & set(shared)
    # the two configs that run without sam_priors.json take where a SAM-Mix model's base SAM has moved to
    relocations = {("batch_inference.json", ""): {"sam_checkpoint"}, ("inference_sam_mix.json", ""): {"sam_checkpoint"},
                   ("inference_sam_mix.json", "predictor"): {"sam_checkpoint"}}
    for path in sorted(CONFIGS.rglob("*.json")):
        for where, block in _dicts(json.load(open(path))):
            if (path.name, where) != ("sam_priors.json", "priors"):
                # a constructor argument that reads the block (``"$@priors.slices_per_batch"``) is no copy
                own = {k for k in block if not str(block[k]).startswith("$@priors.")}
                repeated = fields & own - relocations.get((path.name, where), set())
                assert not repeated, f"{path.name}: {where or '<top>'} repeats prior settings {sorted(repeated)}"
    assert "priors#prior_kinds" in json.load(open(CONFIGS / "train_samaug_cls.json"))
    assert all("priors#sam_window" in json.load(open(p)) for p in PRESETS.values())
    inference_cls = json.load(open(CONFIGS / "inference_cls.json"))
    assert "card" in inference_cls["priors"] and "@priors" in inference_cls["sam_prior"]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_match_dataset_specs(preset):
    """A preset names its dataset; the channel names and regions come from the dataset's spec (bundle/data/labels.py),
    written nowhere else."""
    config = json.load(open(PRESETS[preset]))
    spec = DATASETS[config["dataset_name"]]
    assert not {"image_channel_names", "regions"} & set(config)
    for files in (config_files(preset), [SAM_PRIORS, str(CONFIGS / "train_samaug_cls.json"), PRESETS[preset]],
                  [SAM_PRIORS, str(CONFIGS / "train_weak.json"), PRESETS[preset]]):
        parser = _parser(files)
        assert parser.get_parsed_content("image_channel_names") == list(spec.image_channel_names)
    regions = _parser(config_files(preset)).get_parsed_content("regions")
    assert {k: tuple(v) for k, v in regions.items()} == dict(spec.regions)
    # presets only set keys that both the training and the inference run define
    shared = json.load(open(SAM_PRIORS))
    shared = set(shared) | {f"priors#{k}" for k in shared["priors"]}
    train, inference = json.load(open(TRAIN)), json.load(open(INFERENCE))
    assert set(config) <= (set(train) | shared) & (set(inference) | shared)


def test_a_dataset_of_ones_own_names_its_channels_and_regions():
    parser = _parser(config_files(None), dataset_name="mine")
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("input_channel_names")
    assert "dataset_name 'mine' is none of the datasets the bundle knows" in str(_root_cause(info.value))
    parser = _parser(config_files(None), dataset_name="mine", image_channel_names=["T2"], regions={"prostate": [1, 2]})
    assert parser.get_parsed_content("network_def").out_channels == 1


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("prior_mode, spatial_dims", [("none", 2), ("channels", 3)])
def test_flags_switch_components(preset, prior_mode, spatial_dims):
    """``prior_mode none`` builds no mask generator and no prior transform; ``spatial_dims`` picks net and inferer."""
    if preset == "brats" and prior_mode == "channels":
        prior_mode = "concat"  # add / channels need a single-channel image
    # a SAM checkpoint that does not exist: building any SAM for the raw baseline would fail
    missing_sam = {"priors#sam_checkpoint": "/nonexistent/sam.pth"} if prior_mode == "none" else {}
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
    folder = untrained_model(tmp_path)
    verify_net_in_out("network_def", meta_file=METADATA, config_file=INFERENCE, model_dir=str(folder))
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(folder / "model.pt"),
                meta_file=METADATA, config_file=INFERENCE, model_dir=str(folder))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    meta = json.load(open(METADATA))["network_data_format"]
    image = meta["inputs"]["image"]
    out = scripted(torch.rand(1, image["num_channels"], *([16] * len(image["spatial_shape"]))))
    assert out.shape[1] == meta["outputs"]["pred"]["num_channels"]


def test_metadata_describes_default_network():
    parser = _parser(config_files(None))
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
    trained = _parser(config_files("brats"), **TINY, prior_mode=trained_mode).get_parsed_content("network_def")
    (tmp_path / "models").mkdir()
    torch.save(trained.state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(RuntimeError) as err:  # MONAI's config runner wraps the handler's ValueError
        evaluate(data, tmp_path, prior_mode=run_mode)
    message = str(_root_cause(err.value))
    assert f"trained with {found} input channels" in message
    assert f"builds {expected}" in message
    assert f"prior_mode={run_mode}" in message
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.csv"))


def test_inference_refuses_settings_unlike_the_card(phantom_set, tmp_path):
    """inference.json takes the model's settings from its card: a preset of the same dataset may be merged, another
    dataset's preset or an override that changes what the network sees is refused before anything runs."""
    data = phantom_set("lits")
    folder = untrained_model(tmp_path, "lits", prior_mode="none")
    infer(data, tmp_path, files=[SAM_PRIORS, INFERENCE, PRESETS["lits"]], prior_mode="none")
    assert [p.name.endswith("_pred.nii.gz") for p in (tmp_path / "predictions").iterdir()] == [True]
    card = str(folder / "model_card.json")
    for files, overrides, refused in [
        ([INFERENCE], {"prior_mode": "add"}, "the model was trained with prior_mode 'none'; this inference asks for "
                                             "'add'"),
        ([INFERENCE, PRESETS["brats"]], {}, "the model was trained with prior_mode 'none'"),
        ([SAM_PRIORS, INFERENCE], {"regions": {"liver": [1]}}, "regions"),
    ]:
        with pytest.raises(Exception) as info:
            infer(data, tmp_path / "other", files=files, model_dir=str(folder), **overrides)
        assert error_line(info.value).startswith(f"ERROR: {card}: "), error_line(info.value)
        assert refused in error_line(info.value)
        assert not (tmp_path / "other" / "predictions").exists()
    # a prior setting unlike the card's (a preset's SAM window) is refused by the settings class
    lits = untrained_model(tmp_path / "priors", "lits")
    with pytest.raises(Exception) as info:
        infer(data, tmp_path / "priors", files=[INFERENCE], model_dir=str(lits),
              **{"priors#sam_window": {"preset": "minmax", "channels": 0}})
    assert "priors#sam_window: the model was trained with {'preset': 'ct_liver'" in error_line(info.value)
