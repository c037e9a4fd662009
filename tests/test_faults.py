"""Faults and bad input as a hostile environment serves them (issue 13: silent damage, secrets).

Every fault comes from a real HTTP server on 127.0.0.1 (tests/tileserver.py):
bodies cut short of their Content-Length, JPEG and PNG files that end early, a
PNG declaring 16000 x 16000 pixels, endless bodies, tiles of the wrong size,
secrets in every form a tile URL carries them. Each case asserts the outcome
(the error line, the nodata and failed counts, the files left, the secret
absent from every byte written) and is counted; the module prints its tally.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import resource
import shutil
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import mercantile
import numpy as np
import pytest
from inference_helpers import make_rgb_model, pattern_provider, pattern_tile
from osgeo import gdal
from tileserver import TileServer

from satseg_plugin.inference.__main__ import main as segment_main
from satseg_plugin.inference.cli import run_cli
from satseg_plugin.inference.imageio import ImageSizeError, decode_image, encode_png, read_image
from satseg_plugin.inference.segment import SegmentRequest, SegmentResult, run_segment
from satseg_plugin.inference.tileplan import HALF_WORLD, xyz_resolution
from satseg_plugin.inference.tileurl import redact, strip_secrets
from training.dataset.__main__ import main as dataset_main

Z = 18
T0 = mercantile.tile(10.0, 45.0, Z)
RES = xyz_resolution(Z)
#: The six tiles of the 3 x 2 extent every segment case runs on (the model has no overlap: no context tiles).
TILES = [(Z, T0.x + i, T0.y + j) for j in range(2) for i in range(3)]

# --- the tally ---------------------------------------------------------------------------------
TALLY: dict[str, list[str]] = {"cases": [], "clear errors": [], "nothing lost": []}


def record(case: str, clear_error: bool = False, nothing_lost: bool = False) -> None:
    """Count a case once its assertions passed: a bad input refused clearly, or a fault with nothing lost."""
    TALLY["cases"].append(case)
    if clear_error:
        TALLY["clear errors"].append(case)
    if nothing_lost:
        TALLY["nothing lost"].append(case)


@pytest.fixture(scope="module", autouse=True)
def tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    n = len(TALLY["cases"])
    line = (
        f"fault suite: {n} cases tried, {len(TALLY['clear errors'])} refused with a clear one-line error, "
        f"{len(TALLY['nothing lost'])} faults with nothing lost or silently wrong"
    )
    # Past pytest's capture, so the tally shows in a passing run too.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


# --- faulty bodies -----------------------------------------------------------------------------
def encode(pixels: np.ndarray, driver: str) -> bytes:
    """``pixels`` as a real PNG or JPEG file, by GDAL."""
    name = f"/vsimem/fault-{uuid.uuid4().hex}"
    h, w, bands = pixels.shape
    mem = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(pixels[..., i])
    gdal.GetDriverByName(driver).CreateCopy(name, mem)
    mem = None
    try:
        f = gdal.VSIFOpenL(name, "rb")
        gdal.VSIFSeekL(f, 0, 2)
        size = gdal.VSIFTellL(f)
        gdal.VSIFSeekL(f, 0, 0)
        data = bytes(gdal.VSIFReadL(1, size, f))
        gdal.VSIFCloseL(f)
        return data
    finally:
        gdal.Unlink(name)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A real, valid grey PNG of 16000 x 16000 black pixels: about 250 KB that decode to 256 MB (RGB: 768 MB)."""
    side = 16000
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte 0, then the row
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def truncated(data: bytes) -> bytes:
    """The first 60 % of a file: what a download that ended early leaves."""
    return data[: len(data) * 3 // 5]


def faulty_provider(bodies: dict[tuple[int, int, int], bytes]):
    """The pattern tiles, with the given tiles' bodies replaced (served whole, Content-Length right)."""
    return lambda z, x, y: bodies.get((z, x, y)) or pattern_provider(z, x, y)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- segment -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rgb_model(tmp_path_factory.mktemp("m") / "rgb.onnx")


def extent() -> tuple[float, float, float, float]:
    """EPSG:3857 bounds of the six tiles TILES."""
    left, top = -HALF_WORLD + T0.x * 256 * RES, HALF_WORLD - T0.y * 256 * RES
    return left, top - 2 * 256 * RES, left + 3 * 256 * RES, top


def segment(model: Path, url: str, out: Path, **kw: object) -> SegmentResult:
    values: dict = {"retries": 1, "timeout": 5.0, "write_heatmaps": False}
    values.update(kw)
    req = SegmentRequest(
        model=model, bbox=extent(), bbox_crs="EPSG:3857", tiles_url=url, out_dir=out, **values
    )
    return run_segment(req)


def tile_classes(result: SegmentResult) -> dict[tuple[int, int, int], np.ndarray]:
    """The class raster cut into the six tiles."""
    ds = gdal.Open(str(result.classes_path))
    classes = ds.ReadAsArray()
    ds = None
    return {(z, x, y): classes[(y - T0.y) * 256 :][:256, (x - T0.x) * 256 :][:, :256] for z, x, y in TILES}


def assert_segment_outcome(result: SegmentResult, bad: dict[tuple[int, int, int], str]) -> None:
    """The ``bad`` tiles failed with reasons containing the words given, are nodata, and nothing else is."""
    failed = dict(result.tiles_failed)
    assert set(failed) == {f"{z}/{x}/{y}" for z, x, y in bad}, failed
    for (z, x, y), words in bad.items():
        assert words in failed[f"{z}/{x}/{y}"], failed
    per_tile = tile_classes(result)
    for key, classes in per_tile.items():
        if key in bad:
            assert (classes == 255).all()  # nodata, never the model's guess over grey
        else:
            assert (classes != 255).all()
    assert sum(c.pixels for c in result.counts) == (len(TILES) - len(bad)) * 256 * 256
    assert result.tiles_total == len(TILES)
    out = Path(result.classes_path).parent
    names = {p.name for p in out.iterdir()}  # no temporary files
    assert (
        {"classes.tif", "pixel_counts.csv"}
        <= names
        <= {"classes.tif", "classes.tif.aux.xml", "pixel_counts.csv"}
    )


def test_segment_short_body_is_retried_then_nodata(model: Path, tmp_path: Path) -> None:
    once, always = TILES[0], TILES[4]
    with TileServer(pattern_provider) as s:
        s.faults[once] = ["short", None]  # a dropped connection, then the tile as it is
        s.faults[always] = "short"
        result = segment(model, s.template, tmp_path / "out")
        assert s.requests[once] == 2 and s.requests[always] == 2  # each asked for again
    assert_segment_outcome(result, {always: "truncated response"})
    assert "(after 2 tries)" in dict(result.tiles_failed)[f"{always[0]}/{always[1]}/{always[2]}"]
    record("segment: body shorter than Content-Length", nothing_lost=True)


@pytest.mark.parametrize("driver", ["JPEG", "PNG"])
def test_segment_truncated_image_is_nodata_not_grey(model: Path, tmp_path: Path, driver: str) -> None:
    tile = TILES[1]
    z, x, y = tile
    body = truncated(encode(pattern_tile(x, y, z), driver))
    with TileServer(faulty_provider({tile: body})) as s:
        result = segment(model, s.template, tmp_path / "out")
        assert s.requests[tile] == 2  # a damaged image is asked for again, like a timeout
    assert_segment_outcome(result, {tile: "damaged image"})
    if driver == "JPEG":
        assert "Premature end of JPEG file" in dict(result.tiles_failed)[f"{z}/{x}/{y}"]
    record(f"segment: truncated {driver}", nothing_lost=True)


def test_segment_decompression_bomb_is_refused_before_decoding(
    model: Path, tmp_path: Path, bomb: bytes
) -> None:
    tile = TILES[2]
    assert len(bomb) < 1_000_000
    before = peak_rss_mb()
    with TileServer(faulty_provider({tile: bomb})) as s:
        result = segment(model, s.template, tmp_path / "out")
        assert s.requests[tile] == 1  # the same bytes again would not help
    assert_segment_outcome(result, {tile: "image is 16000x16000, not 256x256"})
    # The pixels were never read: 768 MB of RGB would have shown in the peak memory.
    assert peak_rss_mb() - before < 200, (before, peak_rss_mb())
    # Without an expected size, the pixel cap refuses it too (from the header alone).
    with pytest.raises(ImageSizeError, match="declares 16000x16000 pixels"):
        decode_image(bomb, "the bomb")
    assert peak_rss_mb() - before < 200
    record("segment: PNG declaring 16000x16000", nothing_lost=True)


@pytest.mark.parametrize("fault", ["endless", "huge"])
def test_segment_oversized_body_is_cut_off(model: Path, tmp_path: Path, fault: str) -> None:
    tile = TILES[3]
    before = peak_rss_mb()
    with TileServer(pattern_provider) as s:
        s.faults[tile] = fault  # zeros until the client hangs up; "huge" declares 400 MB first
        result = segment(model, s.template, tmp_path / "out")
        assert s.requests[tile] == 1
    assert_segment_outcome(result, {tile: "response larger than 16 MiB"})
    assert peak_rss_mb() - before < 200, (before, peak_rss_mb())
    record(f"segment: {fault} body", nothing_lost=True)


def test_segment_tile_of_the_wrong_size_fails_not_resized(model: Path, tmp_path: Path) -> None:
    tile = TILES[5]
    retina = encode_png(np.repeat(np.repeat(pattern_tile(tile[1], tile[2], Z), 2, axis=0), 2, axis=1))
    with TileServer(faulty_provider({tile: retina})) as s:
        result = segment(model, s.template, tmp_path / "out")
        assert s.requests[tile] == 1
    assert_segment_outcome(
        result,
        {
            tile: "image is 512x512, not 256x256 (the service's 512-px tiles: give its address of 256-px tiles)"
        },
    )
    record("segment: 512 px tile", nothing_lost=True)


def test_damaged_cached_tile_is_fetched_again(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with TileServer(pattern_provider) as s:
        first = segment(model, s.template, tmp_path / "a", cache_dir=cache)
        port = int(s.url.rsplit(":", 1)[1])  # the cache is per service URL: the same one again
    files = sorted(cache.rglob("*.tile"))
    assert len(files) == len(TILES) and not first.tiles_failed
    damaged = files[0]
    damaged.write_bytes(truncated(damaged.read_bytes()))  # a crash or a full disk long ago
    with TileServer(pattern_provider, port=port) as s:
        second = segment(model, s.template, tmp_path / "b", cache_dir=cache)
        asked = dict(s.requests)
    assert len(asked) == 1 and sum(asked.values()) == 1  # only the damaged one, once
    assert not second.tiles_failed and second.counts == first.counts
    decode_image(damaged.read_bytes(), "the cached tile", size=256)  # replaced by a whole one
    record("segment: damaged file in the tile cache", nothing_lost=True)


# --- the segment command line: extents -------------------------------------------------------
def cli(capsys: pytest.CaptureFixture[str], main, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = run_cli(main, [str(a) for a in args])
    got = capsys.readouterr()
    return rc, got.out, got.err


@pytest.mark.parametrize(
    ("bbox", "words"),
    [
        ("200,-6.05,201,-6.04", "error: the extent's longitudes must lie in -180..180 (got 200, 201)"),
        ("39.24,-96,39.25,-95", "error: the extent's latitudes must lie in -90..90 (got -96, -95)"),
        (
            "179.9,-16.1,-179.9,-16.0",
            "error: the extent crosses the antimeridian (west 179.9 is east of east -179.9)",
        ),
    ],
)
def test_segment_refuses_out_of_range_extents(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bbox: str, words: str
) -> None:
    out = tmp_path / "out"
    with TileServer(pattern_provider) as s:
        rc, _, err = cli(capsys, segment_main, "segment", "--model", model, "--bbox", bbox, "--tiles", s.template,
                         "--out", out, "--quiet")  # fmt: skip
        asked = sum(s.requests.values())
    assert rc == 2 and err.startswith(words) and len(err.strip().splitlines()) == 1, err
    assert asked == 0 and not out.exists()  # refused before any request or file
    record(f"segment --bbox {bbox}", clear_error=True)


def test_segment_bbox_starting_with_a_minus_sign_parses(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TileServer(pattern_provider) as s:
        rc, out, err = cli(capsys, segment_main, "segment", "--model", model, "--bbox", "-6.001,-6.05,-6.0,-6.049",
                           "--tiles", s.template, "--out", tmp_path / "out", "--dry-run")  # fmt: skip
    assert rc == 0, err
    assert "pixels at zoom 18" in out
    record("segment --bbox -6,...", clear_error=True)


# --- the dataset builder --------------------------------------------------------------------
def dataset(folder: Path, tiles: list[tuple[int, int, int]]) -> Path:
    """A labels-only dataset folder listing ``tiles`` (what ``build --osm`` leaves before --imagery)."""
    folder.mkdir(parents=True)
    manifest = {"schema": 1, "kind": "osm", "classes": [{"name": "background", "color": "#000000"}],
                "ignore_index": 255, "tile_size": 256, "zoom": Z, "source": None, "counts": {}, "skipped": []}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "sample-filtered.txt").write_text("".join(f"{z}-{x}-{y}\n" for z, x, y in tiles))
    return folder


def build(capsys: pytest.CaptureFixture[str], data: Path, url: str, *extra: str) -> tuple[int, str]:
    rc, _, err = cli(capsys, dataset_main, "build", "--out", data, "--imagery", url, "--retries", "1",
                     "--timeout", "5", "--preview-tiles", "0", *extra)  # fmt: skip
    return rc, err


def skipped(data: Path) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO((data / "skipped.csv").read_text())))
    assert rows[0] == ["id", "reason"]
    return dict(rows[1:])


def test_dataset_keeps_only_whole_tiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bomb: bytes
) -> None:
    tiles = [(Z, T0.x + i, T0.y + j) for j in range(3) for i in range(3)]
    short_once, short, jpeg, png, huge, big, retina = tiles[:7]
    bodies = {
        jpeg: truncated(encode(pattern_tile(jpeg[1], jpeg[2], Z), "JPEG")),
        png: truncated(encode(pattern_tile(png[1], png[2], Z), "PNG")),
        big: bomb,
        retina: encode_png(np.zeros((512, 512, 3), np.uint8) + 90),
    }
    data = dataset(tmp_path / "data", tiles)
    with TileServer(faulty_provider(bodies)) as s:
        s.faults[short_once] = ["short", None]
        s.faults[short] = "short"
        s.faults[huge] = "endless"
        rc, err = build(capsys, data, s.template)
    assert rc == 0, err
    ids = {t: f"{t[0]}-{t[1]}-{t[2]}" for t in tiles}
    reasons = skipped(data)
    assert set(reasons) == {ids[t] for t in (short, jpeg, png, huge, big, retina)}, reasons
    assert reasons[ids[short]].startswith("truncated response (") and reasons[ids[short]].endswith(
        "(after 2 tries)"
    )
    assert (
        reasons[ids[jpeg]].startswith("damaged image (")
        and "Premature end of JPEG file" in reasons[ids[jpeg]]
    )
    assert reasons[ids[png]].startswith("damaged image (")
    assert reasons[ids[huge]] == "response larger than 16 MiB"
    assert reasons[ids[big]] == "image is 16000x16000, not 256x256"
    assert reasons[ids[retina]] == (
        "image is 512x512, not 256x256 (the service's 512-px tiles: give its address of 256-px tiles)"
    )
    # Only whole tiles became training data, each exactly the served one.
    good = [t for t in tiles if ids[t] not in reasons]
    assert sorted(p.stem for p in (data / "images").iterdir()) == sorted(ids[t] for t in good)
    for t in good:
        assert np.array_equal(read_image(data / "images" / f"{ids[t]}.png"), pattern_tile(t[1], t[2], Z))
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"]["images_skipped"] == 6 and manifest["counts"]["images"] == len(good)
    for case in (
        "short body",
        "truncated JPEG",
        "truncated PNG",
        "endless body",
        "16000x16000 PNG",
        "512 px tile",
    ):
        record(f"dataset: {case}", nothing_lost=True)

    # Resume: an image on disk that was damaged since is removed and fetched again, the rest kept.
    victim = data / "images" / f"{ids[good[0]]}.png"
    victim.write_bytes(truncated(victim.read_bytes()))
    with TileServer(pattern_provider) as s:
        rc, err = build(capsys, data, s.template)
        asked = {f"{z}-{x}-{y}" for z, x, y in s.requests}
    assert rc == 0, err
    assert "1 images on disk were damaged: removed and fetched again" in err
    assert ids[good[0]] in asked and not asked & {ids[t] for t in good[1:]}
    assert np.array_equal(read_image(victim), pattern_tile(good[0][1], good[0][2], Z))
    assert json.loads((data / "manifest.json").read_text())["counts"]["images_damaged"] == 1
    record("dataset: damaged image on resume", nothing_lost=True)


# --- ids that are paths ------------------------------------------------------------------------
def test_merge_refuses_an_id_that_leaves_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``../../victim`` in sample.txt: merge used to delete and rewrite tmp/victim.png, outside --out."""
    src = tmp_path / "in"
    (src / "images").mkdir(parents=True)
    (src / "labels" / "color").mkdir(parents=True)
    (src / "manifest.json").write_text(json.dumps({"kind": "masks", "classes": [{"name": "background"}]}))
    (src / "sample.txt").write_text("../../victim\n")
    victims = {
        tmp_path / "victim.png": b"precious",
        src / "victim.png": encode_png(np.zeros((4, 4, 3), np.uint8)),
    }
    for path, body in victims.items():  # what the id points at, so the files "exist"
        path.write_bytes(body)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, dataset_main, "merge", src, "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        f"error: {src / 'sample.txt'}: the tile id '../../victim' is not a plain file name"
    ), err
    assert all(path.read_bytes() == body for path, body in victims.items()) and not out.exists()
    record("merge: id ../../victim in sample.txt", clear_error=True)

    (src / "sample.txt").write_text("ok-1\n")
    (src / "scenes.csv").write_text("id,scene\nsub/dir,a\n")
    rc, _, err = cli(capsys, dataset_main, "merge", src, "--out", out)
    assert rc == 2 and err.startswith(f"error: {src / 'scenes.csv'}: the tile id 'sub/dir'"), err
    record("merge: id sub/dir in scenes.csv", clear_error=True)


def test_training_refuses_an_id_that_leaves_the_folder(tmp_path: Path) -> None:
    from training.data import DatasetError, load_dataset  # torch: imported only here

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "manifest.json").write_text(json.dumps({"classes": [{"name": "background"}], "tile_size": 256}))
    (data / "sample-filtered.txt").write_text("17-1-2\n/etc/passwd\n")
    with pytest.raises(
        DatasetError, match=r"sample-filtered.txt: the tile id '/etc/passwd' is not a plain file"
    ):
        load_dataset(data)
    record("training: id /etc/passwd in sample-filtered.txt", clear_error=True)


# --- secrets -----------------------------------------------------------------------------------
SECRET = "Sx9-secret-4711"


def written(*folders: Path) -> bytes:
    """Every byte of every file under ``folders``: where a secret could have leaked."""
    return b"".join(
        p.read_bytes() for f in folders if f.exists() for p in sorted(f.rglob("*")) if p.is_file()
    )


def leaks(secret: str, text: str, data: bytes) -> list[str]:
    """The forms of ``secret`` (as given, percent-encoded) found in ``text`` or ``data``."""
    from urllib.parse import quote, quote_plus

    forms = {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}
    return sorted(f for f in forms if f in text or f.encode() in data)


@pytest.mark.parametrize(
    ("param", "token"),
    [
        ("key", SECRET),  # MapTiler
        ("apikey", SECRET),
        ("api_key", SECRET),
        ("token", SECRET),
        ("access_token", SECRET),
        ("sig", SECRET),  # Azure SAS style
        ("X-Amz-Signature", SECRET),
        ("access_token", "pk.ab#cd%ef&gh" + SECRET),  # needs percent-encoding in the URL
    ],
)
def test_secret_in_the_url_is_never_written(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], param: str, token: str
) -> None:
    from urllib.parse import quote

    stray = TILES[0]
    with TileServer(pattern_provider, token=token, token_param=param) as s:
        s.faults[stray] = 503  # a failed tile is reported, its reason written
        public = f"{s.template}?fmt=png"
        url = f"{public}&{param}={quote(token, safe='')}"
        data = dataset(tmp_path / "data", TILES)
        rc_b, err_b = build(capsys, data, url)
        rc_s, out_s, err_s = cli(capsys, segment_main, "segment", "--model", model, "--bbox", ",".join(map(str, extent())),
                                 "--bbox-crs", "EPSG:3857", "--tiles", url, "--out", tmp_path / "seg",
                                 "--cache", tmp_path / "cache")  # fmt: skip
    assert rc_b == 0 and rc_s == 0, err_b + err_s
    assert len(list((data / "images").iterdir())) == len(TILES) - 1  # the secret worked
    assert (
        "503" in err_s
        and "1 failed" in out_s
        and skipped(data)[f"{Z}-{stray[1]}-{stray[2]}"].startswith("HTTP 503")
    )
    assert json.loads((data / "manifest.json").read_text())["source"] == public
    # The server is gone: connection errors quote the request URL, the secret with it.
    shutil.rmtree(data)
    data = dataset(tmp_path / "data", TILES)
    rc_d, err_d = build(capsys, data, url, "--retries", "0", "--timeout", "2")
    rc_g, _, err_g = cli(capsys, segment_main, "segment", "--model", model, "--bbox", ",".join(map(str, extent())),
                         "--bbox-crs", "EPSG:3857", "--tiles", url, "--out", tmp_path / "gone")  # fmt: skip
    assert rc_d == 2 and "error: no tile could be fetched" in err_d and "ConnectionError" in err_d, err_d
    assert rc_g == 2 and "error: no imagery tile could be had" in err_g and "ConnectionError" in err_g, err_g
    everything = err_b + err_s + out_s + err_d + err_g
    assert leaks(token, everything, written(tmp_path)) == []
    assert f"{param}=***" in err_d  # the one redaction at work, not a lucky message
    record(f"secret ?{param}= in the URL", nothing_lost=True)


def test_token_from_the_environment_with_odd_characters(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "pk.a#b&c%d e+" + SECRET  # a '#' cut the URL, '&' and '%' changed it
    monkeypatch.setenv("SATSEG_FAULT_TOKEN", token)
    with TileServer(pattern_provider, token=token) as s:
        rc, out, err = cli(capsys, segment_main, "segment", "--model", model, "--bbox", ",".join(map(str, extent())),
                           "--bbox-crs", "EPSG:3857", "--tiles", s.template, "--token-env", "SATSEG_FAULT_TOKEN",
                           "--out", tmp_path / "seg")  # fmt: skip
        url = s.template
    assert rc == 0 and " 0 failed" in out, err  # every tile accepted the percent-encoded token
    rc, _, err2 = cli(capsys, segment_main, "segment", "--model", model, "--bbox", ",".join(map(str, extent())),
                      "--bbox-crs", "EPSG:3857", "--tiles", url, "--token-env", "SATSEG_FAULT_TOKEN",
                      "--out", tmp_path / "gone")  # fmt: skip
    assert rc == 2 and "ConnectionError" in err2
    assert leaks(token, err + out + err2, written(tmp_path)) == []
    record("secret: environment token with # & % space +", nothing_lost=True)


def test_password_in_the_url_is_never_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TileServer(pattern_provider) as s:
        public = s.template
        url = public.replace("http://", f"http://mapper:{SECRET}@")
        data = dataset(tmp_path / "data", TILES)
        rc, err = build(capsys, data, url)
    assert rc == 0, err
    assert json.loads((data / "manifest.json").read_text())["source"] == public
    rc2, err2 = build(capsys, data, url + "?x={bad}")  # refused: the message quotes the URL
    assert rc2 == 2 and "unknown placeholder {bad}" in err2
    assert leaks(SECRET, err + err2, written(tmp_path)) == []
    record("secret: user:password@host", nothing_lost=True)


def test_redaction_covers_every_form() -> None:
    """The one redaction function, on the forms the issue lists (each also checked end to end above)."""
    forms = {
        f"https://api.maptiler.com/tiles/satellite-v2/{{z}}/{{x}}/{{y}}.jpg?key={SECRET}": "key=***",
        f"https://h/{{z}}/{{x}}/{{y}}.png?apikey={SECRET}&api_key={SECRET}": "apikey=***&api_key=***",
        f"https://h/t?token={SECRET}&access_token={SECRET}&fmt=png": "&fmt=png",
        f"https://h/t?sv=2022&sig={SECRET}&X-Amz-Signature={SECRET}": "sig=***",
        f"https://h/t?subscription-key={SECRET}": "subscription-key=***",
        f"https://user:{SECRET}@h/{{z}}/{{x}}/{{y}}.png": "https://***@h/",
        f"proxy?url=https%3A%2F%2Fh%2Ft%3Fkey%3D{SECRET}%26fmt%3Dpng": "key%3D***%26fmt",
        f"https%3A%2F%2Fuser%3A{SECRET}%40h%2Ft": "%3A%2F%2F***%40h",
    }
    for text, kept in forms.items():
        shown = redact(text)
        assert SECRET not in shown and kept in shown, shown
        assert SECRET not in strip_secrets(text)
    token = "pk.a#b&c" + SECRET
    for form in (token, "pk.a%23b%26c" + SECRET):  # the token as sent, percent-encoded
        assert redact(f"GET /0/0/0.png?x={form}", token) == "GET /0/0/0.png?x=***"
    record("redact: every form", nothing_lost=True)


def test_token_goes_only_to_the_host_the_user_gave(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TileJSON document naming another host does not get the token sent there, unless allowed."""
    monkeypatch.setenv("SATSEG_FAULT_TOKEN", SECRET)
    with (
        TileServer(pattern_provider, token=SECRET) as docs,
        TileServer(pattern_provider, token=SECRET) as other,
    ):
        docs.tilejson_tiles = other.template  # another port: another origin
        args = ["segment", "--model", model, "--bbox", ",".join(map(str, extent())), "--bbox-crs", "EPSG:3857",
                "--tiles", docs.url + "/tiles.json", "--token-env", "SATSEG_FAULT_TOKEN"]  # fmt: skip
        rc, _, err = cli(capsys, segment_main, *args, "--out", tmp_path / "a")
        withheld = list(other.lines)
        rc2, out2, err2 = cli(capsys, segment_main, *args, "--out", tmp_path / "b", "--token-any-host")
        sent = list(other.lines[len(withheld) :])
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "sent only to the host you gave" in err and "--token-any-host" in err, err
    assert withheld and not any(SECRET in line for line in withheld)  # asked, but without the token
    assert docs.lines[0].startswith("/tiles.json?access_token=")  # the user's own host got it
    assert rc2 == 0 and " 0 failed" in out2, err2
    assert sent and all(SECRET in line for line in sent)
    assert leaks(SECRET, err + err2 + out2, written(tmp_path)) == []
    record("secret: TileJSON naming another host", clear_error=True)
