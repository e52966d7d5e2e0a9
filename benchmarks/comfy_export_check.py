"""Does ComfyUI accept what `sdflow export` writes?  A check run by hand.

Every example recipe that ComfyUI can express (and ComfyUI's own default
workflow, imported and exported again) is exported with `sdflow export
--format comfyui-api`; then a second process, in an environment where
ComfyUI imports (``--comfy-python``), loads ComfyUI's nodes (its
``nodes.py`` and ``comfy_extras``) and runs ComfyUI's own check of a
queued prompt, ``execution.validate_prompt``, on each.  The model and
image names a workflow uses are made to exist as empty files in a scratch
models and input folder (ComfyUI checks the name is in its list, nothing
more, before it runs).

With ``--record FILE`` the worker also writes what ComfyUI declares of the
nodes sdflow's stages stand for (each one's inputs in order, with their
types and ranges, and its outputs) for tests/test_comfy_export.py, which
checks every export against it without ComfyUI.

    .venv/bin/python benchmarks/comfy_export_check.py --comfyui /work/comfyui \\
        --comfy-python /work/comfy-venv/bin/python [--record tests/data/comfyui_nodes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="a ComfyUI checkout")
    parser.add_argument("--comfy-python", default=sys.executable, help="a Python where ComfyUI imports")
    parser.add_argument("--record", metavar="FILE", help="also write ComfyUI's node declarations here")
    parser.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(json.loads(Path(args.worker).read_text()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    sdflow = [sys.executable, "-m", "sdflow.cli"]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        workflows, skipped = {}, {}
        sources = sorted((ROOT / "examples").glob("*.sdflow"))
        imported = scratch / "default_workflow.sdflow"
        subprocess.run([*sdflow, "import", str(ROOT / "tests/data/comfyui/default_api.json"), "-o", str(imported)],
                       check=True, env=env, capture_output=True)
        for source in [*sources, imported]:
            done = subprocess.run([*sdflow, "export", str(source), "--format", "comfyui-api"],
                                  env=env, capture_output=True, text=True)
            if done.returncode == 0:
                workflows[source.name] = json.loads(done.stdout)
            else:
                skipped[source.name] = done.stderr.strip().splitlines()[0]
        nodes = sorted(_declared_nodes())
        job = scratch / "job.json"
        job.write_text(json.dumps({"comfyui": str(Path(args.comfyui).resolve()), "workflows": workflows,
                                   "nodes": nodes, "record": args.record and str(Path(args.record).resolve()),
                                   "scratch": str(scratch)}))
        done = subprocess.run([args.comfy_python, str(Path(__file__).resolve()), "--comfyui", args.comfyui,
                               "--worker", str(job)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        results = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"ComfyUI {results['version']}: execution.validate_prompt on what sdflow export wrote\n")
    width = max(map(len, [*workflows, *skipped]))
    for name, verdict in results["verdicts"].items():
        print(f"  {name:<{width}}  {'accepted' if verdict is True else 'REFUSED: ' + verdict}")
    for name, why in skipped.items():
        print(f"  {name:<{width}}  not exported: {why}")
    accepted = sum(v is True for v in results["verdicts"].values())
    print(f"\n{accepted} of {len(results['verdicts'])} accepted; {len(skipped)} recipes ComfyUI cannot express")
    if args.record:
        print(f"ComfyUI's declarations of {len(nodes)} nodes written to {args.record}")
    return 0 if accepted == len(results["verdicts"]) else 1


def _declared_nodes() -> set[str]:
    from sdflow.registry import default_registry

    return {node.class_type for spec in default_registry().stages.values() for node in spec.comfyui}


# -- the worker, in ComfyUI's environment -----------------------------------------


def _worker(job: dict) -> int:
    import asyncio
    import contextlib
    import io
    import logging

    sys.path.insert(0, str(HERE))
    import comfy_parity  # this folder: the stand-in for PyAV that nodes.py's video types import
    import comfy_reference  # ComfyUI's import on the CPU

    sys.meta_path.append(comfy_parity._StandInFinder({"av"}))
    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        # ComfyUI's utils package first: something on the way imports comfy/utils.py as a top-level
        # "utils", and server.py (which nodes_images.py imports) then fails to find utils.install_util.
        sys.path.insert(0, job["comfyui"])
        import utils.install_util  # noqa: F401

        mods, _ = comfy_reference._import_comfy(job["comfyui"])
        import execution
        import folder_paths
        import nodes

        started = nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
        if asyncio.iscoroutine(started):
            asyncio.run(started)
    scratch = Path(job["scratch"])
    for folder in ("checkpoints", "loras", "vae", "controlnet", "input"):
        (scratch / folder).mkdir(exist_ok=True)
        if folder == "input":
            folder_paths.set_input_directory(str(scratch / folder))
        else:
            folder_paths.add_model_folder_path(folder, str(scratch / folder), is_default=True)
    verdicts = {}
    for name, prompt in job["workflows"].items():
        for node in prompt.values():
            for key, value in node["inputs"].items():
                if key in FILES and isinstance(value, str):
                    (scratch / FILES[key] / value).parent.mkdir(parents=True, exist_ok=True)
                    (scratch / FILES[key] / value).touch()
        folder_paths.filename_list_cache.clear()
        with contextlib.redirect_stdout(io.StringIO()):
            valid = asyncio.run(execution.validate_prompt("check", prompt, None))
        verdicts[name] = True if valid[0] else _why(valid)
    if job["record"]:
        Path(job["record"]).write_text(json.dumps(_declarations(nodes, job["nodes"], mods.version), indent=1) + "\n")
    print(json.dumps({"version": mods.version, "verdicts": verdicts}))
    return 0


# The inputs whose values are the names of files in a ComfyUI folder.
FILES = {"ckpt_name": "checkpoints", "lora_name": "loras", "vae_name": "vae", "control_net_name": "controlnet",
         "image": "input"}


def _why(valid) -> str:
    error, node_errors = valid[1], valid[3]
    parts = [f"{error.get('message', '')} {error.get('details', '')}".strip()]
    for node, found in (node_errors or {}).items():
        parts += [f"node {node}: {e.get('message')} {e.get('details', '')}".strip() for e in found.get("errors", [])]
    return "; ".join(parts)


def _declarations(nodes, names: list[str], version) -> dict:
    """Each node's inputs in ComfyUI's order (required, then optional): a
    type name, or the list of a combo's values, and the options that bound
    a number; its output types."""
    declared = {}
    for name in names:
        cls = nodes.NODE_CLASS_MAPPINGS.get(name)
        if cls is None:
            declared[name] = None
            continue
        inputs = []
        for group, entries in cls.INPUT_TYPES().items():
            if group not in ("required", "optional"):
                continue
            for input_name, entry in entries.items():
                kind = entry[0]
                options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                item = {"name": input_name, "optional": group == "optional",
                        "type": kind if isinstance(kind, str) else "COMBO"}
                if input_name in FILES and item["type"] == "COMBO":
                    item["files"] = FILES[input_name]  # its values: what the folder holds
                elif isinstance(kind, (list, tuple)):
                    item["values"] = [v for v in kind if isinstance(v, (str, int, float))]
                elif kind == "COMBO" and isinstance(options.get("options"), (list, tuple)):
                    item["values"] = list(options["options"])
                for bound in ("min", "max", "control_after_generate", "multiline"):
                    if bound in options and isinstance(options[bound], (int, float, bool)):
                        item[bound] = options[bound]
                inputs.append(item)
        declared[name] = {"inputs": inputs, "outputs": [str(t) for t in getattr(cls, "RETURN_TYPES", ())],
                          "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name)}
    return {"comfyui": version, "nodes": declared}


if __name__ == "__main__":
    sys.exit(main())
