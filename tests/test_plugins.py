"""Plugins: how a third party adds stage types, and what happens when one is wrong.

Each plugin here is registered for one test and unregistered after, as
datasette's plugin tests do, so no test sees another's plugin.  A plugin that
fails to import is tried through the real entry-point mechanism: a fake
distribution on ``sys.path`` declaring the ``sdflow`` group.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

import sdflow_diffusion
from sdflow import Port, hookimpl, hookspecs
from sdflow.describe import plugin_table
from sdflow.graph import check_source
from sdflow.registry import build_registry, plugin_manager
from cli import sdflow_cli

ROOT = Path(__file__).resolve().parent.parent
BUILT_IN_STAGES = {f"diffusion.{name}" for name in (
    "apply_controlnet", "clip_set_last_layer", "clip_text_encode", "clip_text_encode_sdxl",
    "clip_text_encode_sdxl_refiner", "conditioning_average", "conditioning_combine", "conditioning_concat",
    "conditioning_set_area", "conditioning_set_mask", "conditioning_set_timestep_range", "conditioning_zero_out",
    "empty_latent", "feather_mask", "feather_mask_edges", "freeu", "grow_mask", "image_batch", "image_composite",
    "image_crop", "image_from_batch", "image_pad_for_outpaint", "image_scale", "image_to_mask", "invert_mask",
    "latent_batch", "latent_composite", "latent_crop", "latent_from_batch", "latent_upscale", "load_checkpoint",
    "load_controlnet", "load_image", "load_lora", "load_lora_model_only", "load_mask", "load_vae", "mask_composite",
    "mask_from_rect", "mask_to_image", "repeat_latent_batch", "sample", "sample_advanced", "save_image",
    "set_latent_noise_mask", "solid_mask", "threshold_mask", "vae_decode", "vae_encode", "vae_encode_for_inpaint",
)}


# a third-party plugin, as its author would write it -----------------------------


class UpscaleImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, ge=1.0, le=8.0, description="how much larger")


class LoadUpscaleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="upscaler file, such as 4x-UltraSharp.pth")


class Upscalers:
    """Adds a port type of its own and two stage types that use it."""

    __version__ = "2.5.0"

    @hookimpl
    def sdflow_port_types(self, registry):
        registry.add_port_type("UPSCALE_MODEL", "an image upscaling network (ESRGAN and kin)")

    @hookimpl
    def sdflow_stage_types(self, registry):
        registry.add_stage(
            "load_upscale_model",
            params=LoadUpscaleModel,
            outputs={"upscale_model": Port("UPSCALE_MODEL", "the network")},
            doc="Load an upscaling network.",
        )
        registry.add_stage(
            "upscale_image",
            params=UpscaleImage,
            inputs={"upscale_model": "UPSCALE_MODEL", "image": Port("IMAGE", "the images")},
            outputs={"image": "IMAGE"},
            doc="Upscale images with a network.",
        )


UPSCALE_RECIPE = """\
sdflow 1

ckpt = load_checkpoint(name="sd15.safetensors")
positive = clip_text_encode(clip=ckpt.clip, text="a lighthouse at dusk")
negative = clip_text_encode(clip=ckpt.clip, text="blurry")
latent = empty_latent(width=512, height=512)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent)
image = vae_decode(vae=ckpt.vae, latent=denoised)
upscaler = load_upscale_model(name="4x-UltraSharp.pth")
large = upscale_image(upscale_model=upscaler, image=image, scale=4.0)
save_image(image=large, prefix="large")
"""


@pytest.fixture(scope="module")
def plugins():
    """The installed plugins, loaded once: (plugin manager, load problems, versions)."""
    return plugin_manager()


@contextmanager
def registered(plugins, *named_plugins):
    """Register ``(name, plugin)`` pairs for the ``with`` block and yield the
    registry rebuilt with them; unregister them after, whatever happens."""
    pm, problems, versions = plugins
    for name, plugin in named_plugins:
        pm.register(plugin, name=name)
    try:
        yield build_registry(pm, problems, versions)
    finally:
        for name, _plugin in named_plugins:
            pm.unregister(name=name)


def codes_and_messages(diagnostics):
    return [(d.code, d.message) for d in diagnostics]


# a plugin that works ------------------------------------------------------------


def test_a_third_party_stage_checks_clean(plugins):
    with registered(plugins, ("upscalers", Upscalers())) as registry:
        _recipe, graph, diagnostics = check_source(UPSCALE_RECIPE, "upscale.sdflow", registry)
    assert diagnostics == []
    assert registry.problems == []
    assert graph.nodes["large"].spec.plugin == "upscalers"
    assert graph.nodes["large"].params == UpscaleImage(scale=4.0)
    assert graph.order[-3:] == ("upscaler", "large", "save_image#1")
    info = registry.plugins["upscalers"]
    assert (info.version, info.module) == ("2.5.0", "Upscalers")
    assert info.port_types == ["UPSCALE_MODEL"]
    assert info.stages == ["load_upscale_model", "upscale_image"]
    assert registry.stage("upscale_image").version == "2.5.0"
    assert registry.stage("upscalers.upscale_image") is registry.stage("upscale_image")
    assert registry.port_types["UPSCALE_MODEL"].plugin == "upscalers"


def test_a_plugin_is_gone_once_unregistered(plugins):
    pm, problems, versions = plugins
    with registered(plugins, ("upscalers", Upscalers())) as registry:
        assert registry.stage("upscale_image") is not None
    registry = build_registry(pm, problems, versions)
    assert registry.stage("upscale_image") is None
    assert "upscalers" not in registry.plugins
    _recipe, graph, diagnostics = check_source(UPSCALE_RECIPE, "upscale.sdflow", registry)
    assert graph is None
    assert codes_and_messages(diagnostics) == [
        ("E220", "unknown stage type 'load_upscale_model'"),
        ("E220", "unknown stage type 'upscale_image'"),
    ]


def test_a_plugin_parameter_is_validated_by_its_model(plugins):
    source = UPSCALE_RECIPE.replace("scale=4.0", "scale=16.0")
    with registered(plugins, ("upscalers", Upscalers())) as registry:
        _recipe, graph, diagnostics = check_source(source, "upscale.sdflow", registry)
    assert graph is None
    (diagnostic,) = diagnostics
    assert (diagnostic.code, diagnostic.message, diagnostic.help) == (
        "E402", "'scale' must be at most 8.0, got 16.0", "'scale' ranges from 1.0 to 8.0",
    )
    line = source.splitlines()[diagnostic.span.line - 1]
    assert line[diagnostic.span.column - 1 : diagnostic.span.end_column - 1] == "16.0"


def test_a_plugin_port_type_mismatch_is_reported(plugins):
    source = UPSCALE_RECIPE.replace("upscale_model=upscaler", "upscale_model=ckpt.vae")
    with registered(plugins, ("upscalers", Upscalers())) as registry:
        _recipe, graph, diagnostics = check_source(source, "upscale.sdflow", registry)
    assert graph is None
    assert [(d.code, d.message, d.help) for d in diagnostics] == [
        ("W102", "the result 'upscaler' is never used", "pass it to another stage, or remove it"),
        ("E300", "'upscale_model' expects UPSCALE_MODEL, but ckpt.vae is VAE",
         "UPSCALE_MODEL comes from 'upscaler'"),
    ]


def test_a_plugin_port_type_given_where_a_built_in_one_is_expected(plugins):
    source = textwrap.dedent("""\
        sdflow 1

        ckpt = load_checkpoint(name="sd15.safetensors")
        upscaler = load_upscale_model(name="4x-UltraSharp.pth")
        latent = empty_latent()
        image = vae_decode(vae=upscaler, latent=latent)
        save_image(image=image)
    """)
    with registered(plugins, ("upscalers", Upscalers())) as registry:
        _recipe, graph, diagnostics = check_source(source, "upscale.sdflow", registry)
    assert graph is None
    assert [(d.code, d.message, d.help) for d in diagnostics if d.is_error] == [
        ("E300", "'vae' expects VAE, but upscaler is UPSCALE_MODEL", "VAE comes from 'ckpt.vae'"),
    ]


# a plugin that clashes or is wrong ---------------------------------------------------


class Resampler:
    """A second plugin that wants a stage id the built-in plugin already has."""

    @hookimpl
    def sdflow_port_types(self, registry):
        registry.add_port_type("LATENT", "a latent, again")

    @hookimpl
    def sdflow_stage_types(self, registry):
        registry.add_stage("sample", params=UpscaleImage, outputs={"latent": "LATENT"})
        registry.add_stage("resample", params=UpscaleImage, inputs={"latent": "LATENT"},
                           outputs={"latent": "LATENT"})


def test_two_plugins_may_define_one_short_name_and_a_recipe_names_which(plugins):
    with registered(plugins, ("resampler", Resampler())) as registry:
        problems = [str(p) for p in registry.problems]
        _recipe, graph, diagnostics = check_source(UPSCALE_RECIPE, "upscale.sdflow", registry)
        qualified = UPSCALE_RECIPE.replace("denoised = sample(", "denoised = diffusion.sample(")
        _recipe, qualified_graph, qualified_diagnostics = check_source(qualified, "upscale.sdflow", registry)
    assert problems == ["plugin 'resampler': port type 'LATENT' is already defined by plugin 'diffusion'"]
    assert registry.stage("sample") is None
    assert registry.stage("diffusion.sample").plugin == "diffusion"
    assert registry.stage("resampler.sample").plugin == "resampler"
    assert registry.stage("resample").plugin == "resampler"
    assert graph is None
    errors = [(d.code, d.message, d.help) for d in diagnostics if d.code == "E221"]
    assert errors == [("E221", "stage type 'sample' is defined by plugins 'diffusion' and 'resampler'",
                       "write its full name: 'diffusion.sample' or 'resampler.sample'")]
    assert [d.code for d in qualified_diagnostics if d.is_error] == ["E220", "E220"]  # the upscalers are absent
    assert qualified_graph is None


def test_a_full_stage_name_checks_and_formats_as_written(plugins):
    from sdflow.format import format_recipe
    from sdflow.parse import parse

    source = UPSCALE_RECIPE.replace("latent = empty_latent(", "latent = diffusion.empty_latent(")
    with registered(plugins, ("upscalers", Upscalers())) as registry:
        _recipe, graph, diagnostics = check_source(source, "upscale.sdflow", registry)
    assert diagnostics == []
    assert graph.nodes["latent"].spec.qualified == "diffusion.empty_latent"
    recipe, _ = parse(source, "upscale.sdflow")
    assert format_recipe(recipe) == source


class NotAModel:
    scale: float = 2.0


@pytest.mark.parametrize(
    ("bad_stage", "problem"),
    [
        (dict(id="2x_upscale", params=UpscaleImage, outputs={"image": "IMAGE"}),
         "stage id '2x_upscale' is not a valid name"),
        (dict(id="class", params=UpscaleImage, outputs={"image": "IMAGE"}),
         "stage id 'class' is not a valid name"),
        (dict(id="upscale", params=UpscaleImage, outputs={"image": "PICTURE"}),
         "stage type 'upscale': port 'image' has unknown port type 'PICTURE'"),
        (dict(id="upscale", params=UpscaleImage, inputs={"image": "image"}, outputs={"image": "IMAGE"}),
         "stage type 'upscale': port 'image' has unknown port type 'image'"),
        (dict(id="upscale", params=NotAModel, outputs={"image": "IMAGE"}),
         "stage type 'upscale': params must be a pydantic BaseModel class"),
        (dict(id="upscale", params=UpscaleImage(), outputs={"image": "IMAGE"}),
         "stage type 'upscale': params must be a pydantic BaseModel class"),
        (dict(id="upscale", params=UpscaleImage, inputs={"image": "IMAGE"}),
         "stage type 'upscale' has no outputs and is not an output stage"),
        (dict(id="upscale", params=UpscaleImage, inputs={"scale": "IMAGE"}, outputs={"image": "IMAGE"}),
         "stage type 'upscale': ['scale'] are both inputs and parameters"),
        (dict(id="upscale", params=UpscaleImage, outputs={"the image": "IMAGE"}),
         "stage type 'upscale': port name 'the image' is not a valid name"),
        (dict(id="upscale", params=UpscaleImage, outputs={"image": 3}),
         "stage type 'upscale': inputs and outputs map names to port types (3 is not a port type)"),
    ],
    ids=["leading-digit", "keyword", "unknown-port-type", "lower-case-port-type", "params-not-a-model",
         "params-an-instance", "no-outputs", "input-and-param", "bad-port-name", "port-not-a-type"],
)
def test_an_invalid_stage_is_a_problem_and_the_plugins_other_stages_register(plugins, bad_stage, problem):
    class Sloppy:
        @hookimpl
        def sdflow_stage_types(self, registry):
            registry.add_stage(**bad_stage)
            registry.add_stage("sharpen", params=UpscaleImage, inputs={"image": "IMAGE"},
                               outputs={"image": "IMAGE"})

    with registered(plugins, ("sloppy", Sloppy())) as registry:
        pass
    assert [str(p) for p in registry.problems] == [f"plugin 'sloppy': {problem}"]
    assert registry.plugins["sloppy"].stages == ["sharpen"]
    assert registry.plugins["sloppy"].error is None
    assert BUILT_IN_STAGES < set(registry.stages)


def test_a_bad_port_type_name_is_a_problem(plugins):
    class Lowercase:
        @hookimpl
        def sdflow_port_types(self, registry):
            registry.add_port_type("depth_map")
            registry.add_port_type("DEPTH_MAP")

    with registered(plugins, ("lowercase", Lowercase())) as registry:
        pass
    assert [str(p) for p in registry.problems] == [
        "plugin 'lowercase': port type 'depth_map' must be upper case letters, digits and '_'",
    ]
    assert registry.plugins["lowercase"].port_types == ["DEPTH_MAP"]


class Flaky:
    """A plugin whose hook has a bug of its own."""

    @hookimpl
    def sdflow_stage_types(self, registry):
        raise RuntimeError("model zoo offline")


def test_a_hook_that_raises_is_a_problem_naming_the_plugin(plugins):
    with registered(plugins, ("flaky", Flaky()), ("upscalers", Upscalers())) as registry:
        problems = [str(p) for p in registry.problems]
        _recipe, graph, diagnostics = check_source(UPSCALE_RECIPE, "upscale.sdflow", registry)
    message = "sdflow_stage_types raised RuntimeError: model zoo offline"
    assert problems == [f"plugin 'flaky': {message}"]
    assert registry.plugins["flaky"].error == message
    assert f"flaky 0  (Flaky)\n  error: {message}" in plugin_table(registry)
    assert diagnostics == []
    assert graph is not None
    assert BUILT_IN_STAGES < set(registry.stages)


# a plugin that fails to load, through the real entry points -------------------------------


def fake_distribution(folder: Path, name: str, entry_points: dict[str, str], version: str = "1.0") -> None:
    """What ``pip install`` leaves behind: a ``.dist-info`` folder whose
    ``entry_points.txt`` declares plugins in the ``sdflow`` group."""
    dist_info = folder / f"{name}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[sdflow]", *(f"{ep} = {target}" for ep, target in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site_packages(tmp_path, monkeypatch):
    """A folder on ``sys.path`` to install fake distributions into; the
    modules imported from it are forgotten after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def broken_plugin_folder(tmp_path):
    fake_distribution(tmp_path, "sdflow_broken", {"broken": "no_such_module_xyz"}, "0.3.0")
    return tmp_path


BROKEN = "failed to load (no_such_module_xyz): ModuleNotFoundError: No module named 'no_such_module_xyz'"


def test_a_plugin_that_fails_to_import_is_reported_by_name(broken_plugin_folder, monkeypatch):
    monkeypatch.syspath_prepend(str(broken_plugin_folder))
    pm, problems, versions = plugin_manager()
    assert [str(p) for p in problems] == [f"plugin 'broken': {BROKEN}"]
    assert pm.get_plugin("broken") is None
    registry = build_registry(pm, problems, versions)
    assert registry.plugins["broken"].error == BROKEN
    assert registry.plugins["broken"].version == "0.3.0"
    assert set(registry.stages) == BUILT_IN_STAGES
    _recipe, graph, diagnostics = check_source(UPSCALE_RECIPE, "upscale.sdflow", registry)
    assert graph is None
    # load_upscale_model looks like the built-in latent_upscale: the failed plugin is named first.
    assert [(d.code, d.help.split(" (or: ")[0]) for d in diagnostics][:1] == [
        ("E220", "plugin 'broken' failed to load; run 'sdflow plugins'"),
    ]


def test_a_plugin_with_a_misspelled_hook_fails_to_load(site_packages):
    (site_packages / "typo_plugin.py").write_text(textwrap.dedent("""\
        from sdflow import hookimpl

        @hookimpl
        def sdflow_stage_type(registry):
            pass
    """))
    fake_distribution(site_packages, "sdflow_typo", {"typo": "typo_plugin"})
    pm, problems, versions = plugin_manager()
    (problem,) = problems
    assert problem.plugin == "typo"
    assert problem.message.startswith("failed to load (typo_plugin): PluginValidationError: ")
    assert "sdflow_stage_type" in problem.message
    assert pm.get_plugin("typo") is None
    assert set(build_registry(pm, problems, versions).stages) == BUILT_IN_STAGES


def test_an_installed_plugin_is_found_through_its_entry_point(site_packages):
    (site_packages / "sdflow_blur.py").write_text(textwrap.dedent("""\
        from pydantic import BaseModel, Field
        from sdflow import hookimpl

        class Blur(BaseModel):
            radius: float = Field(2.0, gt=0)

        @hookimpl
        def sdflow_stage_types(registry):
            registry.add_stage("blur", params=Blur, inputs={"image": "IMAGE"},
                               outputs={"image": "IMAGE"}, doc="Gaussian blur.")
    """))
    fake_distribution(site_packages, "sdflow_blur", {"blur": "sdflow_blur"}, "1.4.2")
    registry = build_registry(*plugin_manager())
    assert registry.problems == []
    assert registry.stage("blur").plugin == "blur"
    assert registry.stage("blur").version == "1.4.2"
    assert "blur 1.4.2  (sdflow_blur)\n  stages: blur" in plugin_table(registry)


def test_the_cli_lists_a_broken_plugin_with_its_error(broken_plugin_folder):
    result = sdflow_cli("plugins", pythonpath=broken_plugin_folder)
    assert result.returncode == 0
    assert result.stdout.startswith(f"broken 0.3.0\n  error: {BROKEN}\ndiffusion 0.1.0  (sdflow_diffusion)\n")


def test_the_cli_still_checks_a_recipe_when_a_plugin_is_broken(broken_plugin_folder):
    result = sdflow_cli("check", "examples/txt2img.sdflow", pythonpath=broken_plugin_folder)
    assert result.returncode == 0
    assert result.stderr == (
        f"sdflow: warning: plugin 'broken': {BROKEN}\n"
        "examples/txt2img.sdflow: ok\n"
    )


# run references, verified when the registry is built -------------------------------------


def test_a_run_reference_is_verified_without_importing_its_module(site_packages):
    (site_packages / "heavy_stages.py").write_text("import no_such_heavy_library\n\ndef blur(ctx, params, image):\n    pass\n")

    class Named:
        @hookimpl
        def sdflow_stage_types(self, registry):
            registry.add_stage("blur", params=UpscaleImage, inputs={"image": "IMAGE"}, outputs={"image": "IMAGE"},
                               run="heavy_stages:blur")
            registry.add_stage("sharpen", params=UpscaleImage, inputs={"image": "IMAGE"},
                               outputs={"image": "IMAGE"}, run="heavy_stages:sharpn")
            registry.add_stage("grain", params=UpscaleImage, inputs={"image": "IMAGE"},
                               outputs={"image": "IMAGE"}, run="no_such_stages:grain")

    with registered(plugin_manager(), ("named", Named())) as registry:
        source = UPSCALE_RECIPE.replace("large = upscale_image(upscale_model=upscaler, image=image, scale=4.0)",
                                        "large = sharpen(image=image)").replace(
                                        'upscaler = load_upscale_model(name="4x-UltraSharp.pth")\n', "")
        _recipe, graph, diagnostics = check_source(source, "sharpen.sdflow", registry)
    assert "heavy_stages" not in sys.modules
    assert [str(p) for p in registry.problems] == [
        "plugin 'named': stage type 'sharpen': its run function 'heavy_stages:sharpn': 'heavy_stages' has no 'sharpn'",
        "plugin 'named': stage type 'grain': its run function 'no_such_stages:grain': no module named 'no_such_stages'",
    ]
    assert registry.plugins["named"].stages == ["blur"]
    assert [(d.code, d.message, d.help) for d in diagnostics] == [
        ("E220", "stage type 'sharpen' could not register",
         f"{registry.problems[0]}; run 'sdflow plugins'"),
    ]


# settings, as flags and variables ----------------------------------------------------------


class Colours(BaseModel):
    palette: str = Field("warm", description="which colours to use")
    swatches: int = Field(8, ge=1, description="how many")


class ColourPlugin:
    @hookimpl
    def sdflow_settings(self, registry):
        registry.add_settings(Colours)


def test_a_plugins_settings_become_flags_and_variables(plugins, monkeypatch):
    import argparse

    from sdflow.settings import SettingsError, add_arguments, resolve

    with registered(plugins, ("colours", ColourPlugin())) as registry:
        parser = argparse.ArgumentParser()
        add_arguments(parser, registry)
        given = parser.parse_args(["--palette", "cold", "--models-dir", "a", "--models-dir", "b"])
        env = {"SDFLOW_SWATCHES": "3", "SDFLOW_PALETTE": "ignored", "SDFLOW_MODELS": os.pathsep.join(["c", "d"])}
        settings = resolve(registry, given, env)
        with pytest.raises(SettingsError, match=r"^\$SDFLOW_SWATCHES: Input should be greater than or equal to 1"):
            resolve(registry, parser.parse_args([]), {"SDFLOW_SWATCHES": "0"})
        help_text = parser.format_help()
    assert settings["colours"] == Colours(palette="cold", swatches=3)  # the flag wins over the variable
    assert [str(p) for p in settings["diffusion"].models_dirs] == ["a", "b", "c", "d"]  # flags, then $SDFLOW_MODELS
    assert "settings of plugin 'colours'" in help_text and "which colours to use ($SDFLOW_PALETTE)" in help_text


def test_a_boolean_setting_is_turned_on_and_off_by_its_flag(plugins):
    import argparse

    from sdflow.settings import add_arguments, resolve

    with registered(plugins) as registry:
        parser = argparse.ArgumentParser()
        add_arguments(parser, registry)
        on = resolve(registry, parser.parse_args(["--allow-pickle"]), {})
        off = resolve(registry, parser.parse_args(["--no-allow-pickle"]), {"SDFLOW_ALLOW_PICKLE": "1"})
        from_env = resolve(registry, parser.parse_args([]), {"SDFLOW_ALLOW_PICKLE": "yes"})
    assert (on["diffusion"].allow_pickle, off["diffusion"].allow_pickle, from_env["diffusion"].allow_pickle) == (
        True, False, True)


def test_a_setting_whose_variable_is_taken_is_a_problem(plugins):
    class Models(BaseModel):
        model_folders: tuple[Path, ...] = Field((), description="more folders", json_schema_extra={"env": "SDFLOW_MODELS"})

    class Clash:
        @hookimpl
        def sdflow_settings(self, registry):
            registry.add_settings(Models)

    with registered(plugins, ("clash", Clash())) as registry:
        pass
    assert [str(p) for p in registry.problems] == [
        "plugin 'clash': setting 'model_folders': $SDFLOW_MODELS is already a variable of 'diffusion'"]


def test_a_setting_whose_flag_is_taken_is_a_problem(plugins):
    class Device(BaseModel):
        device: str = Field("tpu", description="another device")

    class Clash:
        @hookimpl
        def sdflow_settings(self, registry):
            registry.add_settings(Device)

    with registered(plugins, ("clash", Clash())) as registry:
        pass
    assert [str(p) for p in registry.problems] == [
        "plugin 'clash': setting 'device': --device is already a setting of plugin 'diffusion'"]
    assert "clash" not in registry.settings


def test_sdflow_run_takes_the_diffusion_settings_and_refuses_a_bad_one(tmp_path):
    result = sdflow_cli("run", "--help")
    assert "--models-dir DIR" in result.stdout and "$SDFLOW_MODELS" in result.stdout
    result = sdflow_cli("run", "examples/txt2img.sdflow", "--output", str(tmp_path), env={"SDFLOW_DTYPE": "fp8"})
    assert result.returncode == 2
    assert result.stderr.startswith("sdflow: error: $SDFLOW_DTYPE: Input should be 'auto', 'fp16', 'bf16' or 'fp32'")


# control over plugins ------------------------------------------------------------------------


def test_a_disabled_plugin_is_not_loaded_and_says_so(tmp_path):
    env = {"SDFLOW_DISABLE_PLUGINS": "diffusion"}
    listed = sdflow_cli("plugins", env=env)
    checked = sdflow_cli("check", "examples/txt2img.sdflow", env=env)
    assert "diffusion 0.1.0  (sdflow_diffusion)  disabled (SDFLOW_DISABLE_PLUGINS)" in listed.stdout
    assert checked.returncode == 1
    assert "E220 unknown stage type 'load_checkpoint'" in checked.stderr


def test_strict_plugins_makes_a_broken_plugin_an_error(broken_plugin_folder):
    result = sdflow_cli("--strict-plugins", "check", "examples/txt2img.sdflow", pythonpath=broken_plugin_folder)
    assert result.returncode == 1
    assert result.stderr == f"sdflow: error: plugin 'broken': {BROKEN}\n"


def test_strict_plugins_may_follow_the_command(broken_plugin_folder):
    result = sdflow_cli("check", "--strict-plugins", "examples/txt2img.sdflow", pythonpath=broken_plugin_folder)
    assert (result.returncode, result.stderr) == (1, f"sdflow: error: plugin 'broken': {BROKEN}\n")


def test_tracing_logs_every_hook_call():
    result = sdflow_cli("check", "examples/txt2img.sdflow", env={"SDFLOW_TRACE_PLUGINS": "1"})
    assert result.returncode == 0
    for hook in ("sdflow_port_types", "sdflow_settings", "sdflow_stage_types"):
        assert f"sdflow: trace: {hook}(registry) -> plugin 'diffusion'" in result.stderr


# a recipe's required plugins ---------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ('require diffusion ">=0.1,<1"', []),
    ("require diffusion", []),
    ('require diffusion ">=2"', [("E252", "the recipe requires plugin 'diffusion' >=2, but version 0.1.0 is installed")]),
    ('require diffusion "two"', [("E251", "'two' is not a version range")]),
    ('require difusion ">=0.1"', [("E250", "the recipe requires plugin 'difusion', which is not installed")]),
])
def test_a_recipe_states_the_plugins_it_needs(plugins, line, expected):
    source = Path(ROOT / "examples" / "txt2img.sdflow").read_text().replace("sdflow 1\n", f"sdflow 1\n{line}\n", 1)
    with registered(plugins) as registry:
        _recipe, graph, diagnostics = check_source(source, "txt2img.sdflow", registry)
    assert [(d.code, d.message) for d in diagnostics] == expected
    assert (graph is None) == bool(expected)
    if expected and expected[0][0] == "E250":
        assert diagnostics[0].help == "did you mean 'diffusion'?"


# the public surface ----------------------------------------------------------------------------

PUBLIC = {"sdflow", "sdflow.plugin"}


def test_plugins_import_nothing_of_the_engine_but_its_public_surface():
    import ast as pyast

    seen = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        if "tests" in path.relative_to(ROOT / "plugins").parts:
            continue
        for node in pyast.walk(pyast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, pyast.Import)
                     else [node.module or ""] if isinstance(node, pyast.ImportFrom) and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] == "sdflow":
                    seen.append(path)
                    assert name in PUBLIC, f"{path.relative_to(ROOT)} imports {name}"
    assert len(seen) > 10


# the hooks themselves -----------------------------------------------------------------


def hook_names() -> list[str]:
    return [name for name, value in vars(hookspecs).items()
            if callable(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")]


class TomlImporter:
    """A third-party importer: reads a recipe's params from a TOML file."""

    @hookimpl
    def sdflow_importers(self, registry):
        def read(path):
            import tomllib

            from sdflow.plugin import literal

            if Path(path).suffix != ".toml":
                return None
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            return "sdflow 1\n" + "".join(f"param {k} = {literal(v)}\n" for k, v in values.items())

        registry.add_importer("toml", read, "params from a TOML table")
        registry.add_importer("toml", read, "the same name again")


def test_a_plugins_importer_is_found_and_reads_its_files(plugins, tmp_path):
    with registered(plugins, ("tomlimport", TomlImporter())) as registry:
        pass
    importer = registry.importers["toml"]
    assert (importer.plugin, importer.doc) == ("tomlimport", "params from a TOML table")
    assert [str(p) for p in registry.problems] == [
        "plugin 'tomlimport': importer 'toml' is already added by plugin 'tomlimport'"]
    table = tmp_path / "x.toml"
    table.write_text('prompt = "a \\"red\\" circle"\nsteps = 4\n')
    assert importer.read(table) == 'sdflow 1\nparam prompt = "a \\"red\\" circle"\nparam steps = 4\n'
    assert importer.read(tmp_path / "x.png") is None
    assert registry.plugins["tomlimport"].importers == ["toml"]


class StageLister:
    """A third-party exporter: a recipe as the list of its stage types."""

    @hookimpl
    def sdflow_exporters(self, registry):
        def write(stages):
            from sdflow.plugin import StageError

            unnamed = {stage.key: "an output stage" for stage in stages if stage.name is None}
            if len(unnamed) > 1:
                raise StageError("one output only", stages=unnamed)
            return "".join(f"{stage.key}: {stage.spec.qualified} {sorted(stage.inputs)}\n" for stage in stages)

        registry.add_exporter("stage-list", write, "the stage types, one a line")
        registry.add_exporter("Stage List", write)


def test_a_plugins_exporter_is_found_and_writes_a_checked_recipe(plugins):
    from sdflow.plugin import StageError, stages_of

    with registered(plugins, ("lister", StageLister())) as registry:
        pass
    exporter = registry.exporters["stage-list"]
    assert (exporter.plugin, exporter.doc) == ("lister", "the stage types, one a line")
    assert [str(p) for p in registry.problems] == [
        "plugin 'lister': exporter 'Stage List': a name (letters, digits, '-') and a function write(stages) "
        "are needed"]
    assert "  exporters (sdflow export --format): stage-list" in plugin_table(registry)
    source = (ROOT / "examples" / "txt2img.sdflow").read_text()
    _recipe, graph, _ = check_source(source, "txt2img.sdflow", registry)
    assert exporter.write(stages_of(graph)).splitlines()[::6] == [
        "ckpt: diffusion.load_checkpoint []", "save_image#1: diffusion.save_image ['image']"]
    _recipe, graph, _ = check_source((ROOT / "examples" / "two_images.sdflow").read_text(), "two.sdflow", registry)
    with pytest.raises(StageError) as raised:
        exporter.write(stages_of(graph))
    assert set(raised.value.stages) == {"save_image#1", "save_image#2"}


COMFY_PLUGIN = """\
from pydantic import BaseModel, ConfigDict, Field
from sdflow import ComfyNode, hookimpl, stage


class Load(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)


class Upscale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, ge=1.0)


@stage(params=Load, outputs={"upscale_model": "UPSCALE_MODEL"},
       comfyui=ComfyNode("UpscaleModelLoader", widgets="model_name>name", title="Load Upscale Model"))
def load_upscale_model(ctx, params, **_):
    "Load an upscaling network."


@stage(params=Upscale, inputs={"upscale_model": "UPSCALE_MODEL", "image": "IMAGE"}, outputs={"image": "IMAGE"},
       comfyui=ComfyNode("ImageUpscaleWithModel", inputs="upscale_model image"))
def upscale_image(ctx, params, **_):
    "Upscale images with a network (at its own scale: ComfyUI's node has no other)."


@stage(params=Upscale, inputs={"image": "IMAGE"}, outputs={"image": "IMAGE"},
       comfyui=ComfyNode("ImageScaleBy", inputs="picture", widgets="scale_by>factor"))
def mistaken(ctx, params, **_):
    "A declaration naming what the stage does not have."


@hookimpl
def sdflow_port_types(registry):
    registry.add_port_type("UPSCALE_MODEL", "an upscaling network")


@hookimpl
def sdflow_stage_types(registry):
    registry.add_stages([load_upscale_model, upscale_image, mistaken])
"""


def test_a_plugins_stages_name_their_comfyui_nodes_for_import_and_export(site_packages, tmp_path):
    """A third-party stage declares the ComfyUI node it stands for: sdflow
    export writes that node, sdflow import reads it back; a declaration that
    names what the stage lacks is the plugin's problem."""
    (site_packages / "sdflow_upscalers.py").write_text(COMFY_PLUGIN)
    fake_distribution(site_packages, "sdflow_upscalers", {"upscalers": "sdflow_upscalers"}, "1.0.0")
    registry = build_registry(*plugin_manager())
    assert [str(p) for p in registry.problems] == [
        "plugin 'upscalers': stage type 'mistaken': its ComfyUI node ImageScaleBy names no such input 'picture', "
        "parameter 'factor'"]
    recipe = tmp_path / "upscale.sdflow"
    recipe.write_text(UPSCALE_RECIPE.replace(", scale=4.0", ""))
    result = sdflow_cli("export", str(recipe), "--format", "comfyui-api", pythonpath=site_packages)
    assert result.returncode == 0, result.stderr
    workflow = json.loads(result.stdout)
    nodes = {node["class_type"]: (key, node["inputs"]) for key, node in workflow.items()}
    loader, _ = nodes["UpscaleModelLoader"]
    assert nodes["UpscaleModelLoader"][1] == {"model_name": "4x-UltraSharp.pth"}
    assert nodes["ImageUpscaleWithModel"][1] == {"upscale_model": [loader, 0], "image": [nodes["VAEDecode"][0], 0]}
    exported = tmp_path / "upscale.json"
    exported.write_text(result.stdout)
    back = sdflow_cli("import", str(exported), pythonpath=site_packages)
    assert back.returncode == 0, back.stderr
    assert 'upscaler = load_upscale_model(name="4x-UltraSharp.pth")' in back.stdout
    assert "large = upscale_image(upscale_model=upscaler, image=image)" in back.stdout
    recipe.write_text(UPSCALE_RECIPE)  # scale=4.0: ComfyUI's node has no input for it
    result = sdflow_cli("export", str(recipe), "--format", "comfyui-api", pythonpath=site_packages)
    assert result.returncode == 1
    assert ("E630 comfyui-api cannot express stage 'large': ComfyUI's ImageUpscaleWithModel has no input for "
            "scale=4.0") in result.stderr


def test_every_hook_is_named_documented_implemented_and_tested():
    names = hook_names()
    assert names == ["sdflow_port_types", "sdflow_settings", "sdflow_stage_types", "sdflow_importers",
                     "sdflow_exporters"]
    tested = set(re.findall(r"def (sdflow_\w+)\(", Path(__file__).read_text(encoding="utf-8")))
    for name in names:
        assert name.startswith("sdflow_")
        spec = getattr(hookspecs, name)
        assert inspect.getdoc(spec), f"{name} has no docstring"
        assert list(inspect.signature(spec).parameters) == ["registry"]
        assert hasattr(getattr(sdflow_diffusion, name, None), f"{hookspecs.PROJECT}_impl"), (
            f"the built-in plugin does not implement {name}")
        assert name in tested, f"no plugin in this file implements {name}"


# staying light ---------------------------------------------------------------------------

LIGHT = """\
import contextlib, io, sys
import sdflow
from sdflow.cli import main
from sdflow.graph import check_source
from sdflow.registry import default_registry

registry = default_registry()
with open("examples/txt2img.sdflow", encoding="utf-8") as f:
    _recipe, graph, diagnostics = check_source(f.read(), "txt2img.sdflow", registry)
assert graph is not None and diagnostics == [], diagnostics
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for argv in (["stages"], ["stages", "sample"], ["plugins"], ["check", "examples/txt2img.sdflow"],
                 ["fmt", "--check", "examples/txt2img.sdflow"], ["graph", "examples/txt2img.sdflow"]):
        assert main(argv) == 0, argv
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "diffusers", "transformers"})
print(heavy)
"""


def test_checking_a_recipe_never_imports_torch_diffusers_or_transformers():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", LIGHT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stderr == ""
    assert result.stdout == "[]\n"


def test_unnamed_stages_keep_their_keys_through_sdflow_fmt(plugins):
    from sdflow.format import format_recipe
    from sdflow.parse import parse

    source = (ROOT / "examples" / "two_images.sdflow").read_text(encoding="utf-8")
    squeezed = source.replace("\n\n", "\n").replace("(\n    ", "(").replace(",\n    ", ", ")
    recipe, _ = parse(squeezed, "two.sdflow")
    formatted = format_recipe(recipe)
    with registered(plugins) as registry:
        _r, before, _d = check_source(squeezed, "two.sdflow", registry)
        _r, after, _d = check_source(formatted, "two.sdflow", registry)
    assert formatted != squeezed
    assert list(before.nodes) == list(after.nodes)
    assert [k for k in before.nodes if "#" in k]  # there are unnamed stages to keep
