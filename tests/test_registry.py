"""The registry: the built-in models.toml, strict parsing errors, merge order, `base`, suggestions."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import platformdirs
import pytest

from dmedit.core.config import EditConfig
from dmedit.core.errors import UsageError
from dmedit.models.registry import builtin_registry_path, load_registry, parse_registry_text

# Module names of ZeroScope's U-Net (diffusers' default UNet3DConditionModel) around its attention.
SPATIAL_UP_ATTN1 = [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (1, 2, 3) for a in (0, 1, 2)]
OTHER_ATTENTION = [
    "transformer_in.transformer_blocks.0.attn1",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
    "mid_block.temp_attentions.0.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
    "up_blocks.1.attentions.0.transformer_blocks.0",
    *[f"up_blocks.{b}.temp_attentions.{a}.transformer_blocks.0.attn1" for b in (1, 2, 3) for a in (0, 1, 2)],
    *[f"up_blocks.{b}.temp_attentions.{a}.transformer_blocks.0.attn2" for b in (1, 2, 3) for a in (0, 1, 2)],
]

FOO_HEADER = '[models.foo]\nfamily = "text_to_video"\nbuilder = "tiny-t2v"\n'
FOO_SIZES = 'width = 64\nheight = 64\nframes = 8\nmax_frames = 8\nkey_layers = ["up_blocks.*.attentions.*.attn1"]\n'


@pytest.fixture(autouse=True)
def user_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty platform config folder and no $DMEDIT_MODELS, so only this test's files count."""
    folder = tmp_path / "user-config"
    folder.mkdir()
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *args, **kwargs: str(folder))
    monkeypatch.delenv("DMEDIT_MODELS", raising=False)
    return folder


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def matching(patterns: tuple[str, ...], names: list[str]) -> list[str]:
    return [name for name in names if any(fnmatchcase(name, pattern) for pattern in patterns)]


def test_builtin_registry_has_the_documented_entries() -> None:
    registry = load_registry()
    assert registry.files == (builtin_registry_path(),)
    assert list(registry.models) == ["zeroscope", "modelscope", "zeroscope-random", "tiny", "show1",
                                     "show1-interpolation", "show1-sr1", "show1-sr2", "show1-tiny",
                                     "show1-tiny-interpolation", "show1-tiny-sr1", "show1-tiny-sr2"]
    assert list(registry.detectors) == ["grounding-dino-tiny", "grounding-dino-base", "tiny-detector"]
    zeroscope = registry.model("zeroscope")
    assert zeroscope.repo == "cerspense/zeroscope_v2_576w"
    assert zeroscope.revision == "1f35e3dc3350d649f342bb7618fe34ac8fae5c9e"
    assert (zeroscope.width, zeroscope.height, zeroscope.frames, zeroscope.max_frames) == (576, 320, 8, 48)
    assert zeroscope.dtype.cuda == "fp16" and zeroscope.license == "cc-by-nc-4.0"
    modelscope = registry.model("modelscope")
    assert (modelscope.revision, modelscope.variant) == ("8227dddca75a8561bf858d604cc5dae52b954d01", "fp16")
    tiny = registry.model("tiny")
    assert tiny.builder == "tiny-t2v" and tiny.repo is None and tiny.detector == "tiny-detector"
    assert registry.detector("tiny-detector").builder == "tiny-grounding-dino"
    for detector in registry.detectors.values():
        assert (detector.box_threshold, detector.text_threshold) == (0.35, 0.25)


@pytest.mark.parametrize("name", ["zeroscope", "modelscope", "tiny"])
def test_builtin_defaults_are_valid_and_scale_dds_by_the_latent_grid(name: str) -> None:
    entry = load_registry().model(name)
    config = EditConfig().merged(entry.defaults)
    latent_cells = (entry.width // 8) * (entry.height // 8)
    assert config.dds_scale == pytest.approx(2000.0 / latent_cells, rel=1e-12)
    assert config.t_min == 50 and config.t_max == 950
    assert load_registry().detector(entry.detector).name == entry.detector


@pytest.mark.parametrize("name", ["zeroscope", "modelscope", "tiny"])
def test_key_layers_select_spatial_up_block_self_attention_only(name: str) -> None:
    patterns = load_registry().model(name).key_layers
    assert patterns
    assert matching(patterns, SPATIAL_UP_ATTN1 + OTHER_ATTENTION) == SPATIAL_UP_ATTN1


def test_key_layers_on_real_unet3d_module_names() -> None:
    torch = pytest.importorskip("torch")
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        zeroscope_unet = UNet3DConditionModel(cross_attention_dim=1024)
        tiny_unet = UNet3DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
        )
    registry = load_registry()
    for unet, name, expected_count in ((zeroscope_unet, "zeroscope", 9), (tiny_unet, "tiny", 2)):
        names = [module_name for module_name, _ in unet.named_modules()]
        selected = matching(registry.model(name).key_layers, names)
        assert len(selected) == expected_count
        assert all(".attentions." in module and module.endswith("attn1") for module in selected)
        assert all(module.startswith("up_blocks.") for module in selected)


def test_error_names_file_entry_and_key_with_short_source() -> None:
    with pytest.raises(UsageError) as caught:
        parse_registry_text(text=FOO_HEADER + FOO_SIZES + "widht = 64\n", source="models.toml")
    assert str(caught.value) == "models.toml: [models.foo] unknown key 'widht' (did you mean 'width'?)"


SIZES = FOO_HEADER + FOO_SIZES


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(SIZES + "widht = 64\n", ["unknown key 'widht'"], id="unknown-key"),
        pytest.param(
            FOO_HEADER + "width = 64\nheight = 64\nframes = 8\nmax_frames = 8\n",
            ["missing required key 'key_layers'"], id="missing-field",
        ),
        pytest.param(
            SIZES.replace("width = 64", 'width = "576"'), ["'width' must be an integer", "'576'"], id="wrong-type"
        ),
        pytest.param(
            SIZES + 'dtype = { cuda = "float16" }\n', ["'dtype.cuda'", "fp32, fp16, bf16", "'float16'"],
            id="bad-dtype-name",
        ),
        pytest.param(SIZES + 'dtype = { tpu = "fp16" }\n', ["unknown key 'dtype.tpu'"], id="bad-dtype-device"),
        pytest.param(
            SIZES + "[models.foo.defaults]\nstepz = 3\n", ["unknown key 'defaults.stepz'"], id="unknown-defaults-key"
        ),
        pytest.param(
            SIZES + "[models.foo.defaults]\nsteps = 2.5\n", ["'defaults.steps' must be an integer"],
            id="defaults-wrong-type",
        ),
        pytest.param(
            SIZES + '[models.foo.defaults]\nssm_keys = "both"\n', ["'defaults.ssm_keys'", "conditional"],
            id="defaults-bad-choice",
        ),
        pytest.param(
            SIZES + "[models.foo.defaults]\nt_min = 900\nt_max = 100\n", ["key 'defaults'", "t-min 900 is above"],
            id="defaults-inconsistent",
        ),
        pytest.param(
            SIZES.replace('["up_blocks.*.attentions.*.attn1"]', "[]"), ["'key_layers'"], id="empty-key-layers"
        ),
        pytest.param(SIZES.replace("width = 64", "width = 60"), ["'width'", "multiple of 8"], id="bad-width"),
        pytest.param(SIZES.replace("tiny-t2v", "tiny-t2"), ["'builder'", "tiny-t2v"], id="unknown-builder"),
        pytest.param(
            SIZES + 'detector = "tiny-detectr"\n', ["'detector'", "did you mean 'tiny-detector'"],
            id="unknown-detector",
        ),
        pytest.param('[models.foo]\nbase = "zeroscop"\n', ["'base'", "did you mean 'zeroscope'"], id="unknown-base"),
    ],
)
def test_model_entry_errors_name_file_entry_and_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    assert_one_line_error(tmp_path=tmp_path, text=text, prefix="[models.foo] ", fragments=fragments)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            '[models.a]\nbase = "b"\n[models.b]\nbase = "a"\n', ["[models.b]", "'base'", "loop a -> b -> a"],
            id="base-loop",
        ),
        pytest.param(
            '[detectors.foo]\nfamily = "grounding_dino"\nrepo = "x/y"\nbox_threshold = "high"\n',
            ["[detectors.foo]", "'box_threshold' must be a number"], id="detector-wrong-type",
        ),
        pytest.param(
            '[detectors.foo]\nfamily = "grounding_dino"\n', ["[detectors.foo]", "'repo', 'path' or 'builder'"],
            id="detector-without-weights",
        ),
        pytest.param('[detector.foo]\nfamily = "grounding_dino"\n', ["unknown table [detector]"], id="unknown-table"),
        pytest.param(
            '[models.foo]\nfamily = "text_to_video"\nwidth = = 64\n', ["invalid TOML", "line 3"], id="toml-syntax"
        ),
    ],
)
def test_other_registry_errors_name_file_and_entry(tmp_path: Path, text: str, fragments: list[str]) -> None:
    assert_one_line_error(tmp_path=tmp_path, text=text, prefix="", fragments=fragments)


def assert_one_line_error(*, tmp_path: Path, text: str, prefix: str, fragments: list[str]) -> None:
    """Loading `text` as --registry fails with one line: "<file>: <prefix>..." holding every fragment."""
    registry_file = write(tmp_path / "mine.toml", text)
    with pytest.raises(UsageError) as caught:
        load_registry(registry_file=registry_file)
    message = str(caught.value)
    assert message.startswith(f"{registry_file}: {prefix}")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_merge_order_builtin_config_env_then_registry_flag(
    tmp_path: Path, user_config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = write(
        user_config_dir / "models.toml",
        '[models.zeroscope]\nframes = 16\ndescription = "from config"\n[models.zeroscope.defaults]\nsteps = 10\n',
    )
    env_file = write(tmp_path / "env.toml", "[models.zeroscope]\nframes = 24\n")
    flag_file = write(tmp_path / "flag.toml", "[models.zeroscope]\nframes = 32\n")

    assert load_registry().model("zeroscope").frames == 16
    monkeypatch.setenv("DMEDIT_MODELS", str(env_file))
    assert load_registry().model("zeroscope").frames == 24
    registry = load_registry(registry_file=flag_file)
    zeroscope = registry.model("zeroscope")

    assert registry.files == (builtin_registry_path(), config_file, env_file, flag_file)
    assert zeroscope.frames == 32
    assert zeroscope.description == "from config"
    assert zeroscope.repo == "cerspense/zeroscope_v2_576w"
    assert zeroscope.defaults["steps"] == 10
    assert zeroscope.defaults["dds_scale"] == pytest.approx(2000 / (72 * 40))
    assert zeroscope.source_file == str(flag_file)
    assert registry.model("modelscope").source_file == str(builtin_registry_path())


def test_missing_env_or_flag_file_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="--registry .*nope.toml"):
        load_registry(registry_file=tmp_path / "nope.toml")
    monkeypatch.setenv("DMEDIT_MODELS", str(tmp_path / "gone.toml"))
    with pytest.raises(UsageError, match=r"\$DMEDIT_MODELS .*gone.toml"):
        load_registry()


def test_three_line_finetune_inherits_everything_but_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    registry_file = write(
        tmp_path / "finetune.toml",
        '[models.my-finetune]\nbase = "zeroscope"\npath = "~/my-finetune"\n'
        '[models.relative]\nbase = "my-finetune"\npath = "weights/relative"\nframes = 12\n',
    )
    registry = load_registry(registry_file=registry_file)
    zeroscope, finetune = registry.model("zeroscope"), registry.model("my-finetune")

    assert finetune.path == str(tmp_path / "home" / "my-finetune")
    assert finetune.source_file == str(registry_file)
    inherited = ("family", "repo", "revision", "width", "height", "frames", "key_layers", "dtype", "defaults", "detector")
    for key in inherited:
        assert getattr(finetune, key) == getattr(zeroscope, key)
    relative = registry.model("relative")
    assert relative.path == str(tmp_path / "weights" / "relative")
    assert (relative.frames, relative.width) == (12, 576)


def test_unknown_names_suggest_the_closest_entry() -> None:
    registry = load_registry()
    with pytest.raises(UsageError) as caught:
        registry.model("zeroscop")
    assert str(caught.value) == "unknown model 'zeroscop'; did you mean 'zeroscope'?"
    with pytest.raises(UsageError, match="did you mean 'grounding-dino-tiny'"):
        registry.detector("grounding-dino-tin")
    with pytest.raises(UsageError, match="known models: modelscope, show1, show1-interpolation, .*, tiny, zeroscope"):
        registry.model("sora")
