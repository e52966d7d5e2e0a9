"""sdflow's built-in diffusion stages: ComfyUI's default workflow.

An ordinary sdflow plugin, found through the ``sdflow`` entry-point group
like any third-party one, and using only the public surface
(:mod:`sdflow.plugin`).  Declaring the stages imports only pydantic: torch
and diffusers are imported by the code that runs them.

The rooms: ``stages/`` declares the stage types; the modules beside it
load models and compute (see ``docs/architecture.md``).
"""

from __future__ import annotations

from sdflow.plugin import hookimpl

__version__ = "0.1.0"

PORT_TYPES = {
    "MODEL": ("the denoising U-Net, with its noise schedule settings", True),
    "CLIP": ("the text encoder(s) and tokenizer(s)", True),
    "VAE": ("the autoencoder between pixels and latents", True),
    "CONDITIONING": ("encoded prompt embeddings that guide sampling", False),
    "LATENT": ("a batch of latent images", False),
    "IMAGE": ("a batch of RGB images", False),
    "MASK": ("a batch of single-channel masks, 1 where to repaint", False),
    "CONTROL_NET": ("a ControlNet model", True),
}


@hookimpl
def sdflow_port_types(registry):
    for name, (doc, persistent) in PORT_TYPES.items():
        registry.add_port_type(name, doc, persistent=persistent)


@hookimpl
def sdflow_settings(registry):
    from sdflow_diffusion.settings import DiffusionSettings

    registry.add_settings(DiffusionSettings)


@hookimpl
def sdflow_stage_types(registry):
    from sdflow_diffusion import stages

    registry.add_stages(stages)


@hookimpl
def sdflow_importers(registry):
    import functools

    from sdflow_diffusion.images.a1111 import import_a1111
    from sdflow_diffusion.interchange.comfyui import import_comfyui

    # ComfyUI's graph first: a PNG that carries both it and A1111's summary text is read as the graph.
    registry.add_importer("comfyui", functools.partial(import_comfyui, stages=registry.stages),
                          "ComfyUI's workflows: API or UI format JSON, or a PNG ComfyUI saved (its prompt or workflow "
                          "chunk)")
    registry.add_importer("a1111", import_a1111, "AUTOMATIC1111's parameters text, in a PNG or a .txt (A1111, "
                                                 "Forge, Fooocus in A1111 mode, stable-diffusion.cpp write it)")


@hookimpl
def sdflow_exporters(registry):
    from sdflow_diffusion.interchange.comfyui_export import export_api, export_ui

    registry.add_exporter("comfyui-api", export_api, "ComfyUI's API format: the JSON of its Export (API) and its "
                                                     "/prompt endpoint")
    registry.add_exporter("comfyui-ui", export_ui, "ComfyUI's UI format: the JSON of its Save and Load, laid out "
                                                   "in columns")
