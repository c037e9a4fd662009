#!/usr/bin/env bash
# Build the two shipped default models from the real data in ../shared/data:
#   models/satseg-buildings.{onnx,pt}  building / background, aerial and drone imagery at zoom 19
#   models/satseg-landcover.{onnx,pt}  building, land, road, vegetation, water, satellite at 1 m/px
#
#   scripts/make_default_models.sh           # everything: data, training, export, held-out scores
#   STOP_AFTER_DATA=1 scripts/...            # only build the datasets (data/default/)
#   SKIP_TRAIN=1 scripts/...                 # export and score runs/{buildings,landcover}/best.pt as they are
#   ONLY=buildings scripts/...               # one of the two models
#   MINUTES=95 scripts/...                   # CPU training minutes of the land-cover model (buildings: 110, its shipped run's)
#   INIT=1 scripts/...                       # a second cosine cycle from models/satseg-*.pt (land cover:
#                                            # the mean of its last third of epochs ships, see models/*.md)
#   SATSEG_MODELS=runs/try/models scripts/.. # ship elsewhere (experiments)
#
# Data (data/default/, gitignored):
#   buildings: OpenAerialMap tiles of oam-osm-buildings/area1 (Zanzibar), area2 (Kampala) and
#   area3 (Banepa), served by the project's tile server on a loopback port, with their
#   OpenStreetMap buildings, at zoom 19 (weighted up six times with hard links) and zoom 20
#   (three times); no validation split: the weights of the last epoch ship (with a dozen tiles
#   of ground per place, validation swung by 20 points from epoch to epoch, models/*.md).
#   landcover: the Dubai masks of all six scenes (tile1, tile2, tile3, tile4, tile6 and tile7)
#   at 1 m/px; validation: tile1, whole, never trained on (it picks the epoch and judges int8).
#   tile7 trains since 2026-12-07 (models/satseg-landcover.md) and is scored as a training scene.
#   Held out entirely (never trained or validated on): the Zanzibar demo block (every tile of
#   any zoom that touches it). area3 (Banepa) is still scored, as a place the buildings model
#   trained on.
# Recipe (chosen for places the model has not seen, see models/*.md): SegNet width 0.25, AdamW
# 0.002 with a cosine schedule over a time budget, cross-entropy + soft Dice, flips and
# rotations, colour jitter, blur and scale augmentation. INIT=1 runs a second cosine cycle from the
# shipped weights (lr 0.001, 90 minutes, every epoch's weights kept); for the land cover, whose
# validation swings from epoch to epoch, the mean of the last third of the epochs' weights
# (batch-norm statistics measured again) is the candidate. The shipped land-cover weights are
# such a second cycle of the first run's (models/satseg-landcover.md); the buildings model's
# second cycle did not beat its first (models/satseg-buildings.md).
# Test-time flips (training.export --flips): the land-cover graph averages each window with its
# left-right mirror image (+1.5 points of tile1 mIoU for twice the model's time); the buildings
# graph does not (+0.4 on the demo block, not worth halving the speed of the default model).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SHARED=${SATSEG_SHARED:-../shared/data}
PORT=${SATSEG_TILE_PORT:-18765}
DATA=${SATSEG_DATA:-data/default}
RUNS=${SATSEG_RUNS:-runs}
MODELS=${SATSEG_MODELS:-models}
MINUTES=${MINUTES:-95}
ONLY=${ONLY:-}
export QT_QPA_PLATFORM=offscreen

OAM=$SHARED/oam-osm-buildings
DUBAI=$SHARED/dubai-aerial
BUILDINGS=training/classes/buildings.json
URL="http://127.0.0.1:$PORT/{z}/{x}/{y}.png"
# EPSG:4326 bboxes (MINLON,MINLAT,MAXLON,MAXLAT): each area's zoom-19 tiles, 1e-6 degrees inside
# so that no neighbouring tile is listed; the demo block exactly as the demo segments it.
AREA1=39.2404185,-6.0674993,39.2459096,-6.0422371
AREA2=32.5895701,0.3481281,32.5957479,0.3515593
AREA3=85.5237589,27.6196659,85.5395498,27.6275728
DEMO=39.2411042,-6.0675002,39.2459105,-6.0661348

wanted() { [[ -z "$ONLY" || "$ONLY" == "$1" ]]; }
mkdir -p "$DATA" "$RUNS"

# --- data ---------------------------------------------------------------------------------------
if [[ -n "${REBUILD_DATA:-}" || ! -f "$DATA/buildings-train/manifest.json" || ! -f "$DATA/dubai-tile7/manifest.json" ]]; then
    "$PY" -m scripts.tileserver "$OAM/area1" "$OAM/area2" "$OAM/area3" --port "$PORT" >"$DATA/tileserver.log" 2>&1 &
    SERVER_PID=$!
    trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
    "$PY" - "$PORT" <<'EOF'
import sys
import time
import urllib.request

url = f"http://127.0.0.1:{sys.argv[1]}/tiles.json"
for _ in range(100):
    try:
        urllib.request.urlopen(url, timeout=1).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"the tile server did not answer at {url}")
EOF
    build() {  # build NAME BBOX ZOOM AREA
        rm -rf "${DATA:?}/$1"
        "$PY" -m training.dataset build --bbox "$2" --zoom "$3" --classes "$BUILDINGS" \
            --osm "$OAM/$4/labels.geojson" --imagery "$URL" --workers 4 --out "$DATA/$1"
    }
    build oam-area1-z19 "$AREA1" 19 area1
    build oam-area1-z20 "$AREA1" 20 area1
    build oam-area2-z19 "$AREA2" 19 area2
    build oam-area2-z20 "$AREA2" 20 area2
    build oam-area3-z19 "$AREA3" 19 area3
    build oam-area3-z20 "$AREA3" 20 area3
    build heldout-area3-z19 "$AREA3" 19 area3
    build heldout-demo-z19 "$DEMO" 19 area1

    # Drop every tile that overlaps the demo block (at any zoom) from the training inputs.
    "$PY" - "$DATA" "$DEMO" <<'EOF'
import sys
from pathlib import Path

import mercantile

data, demo = Path(sys.argv[1]), [float(v) for v in sys.argv[2].split(",")]
for area in ("area1", "area2", "area3"):
    for zoom in (19, 20):
        folder = data / f"oam-{area}-z{zoom}"
        dropped = set()
        for name in ("sample.txt", "sample-filtered.txt"):
            keep = []
            for tile in (folder / name).read_text().split():
                z, x, y = (int(v) for v in tile.split("-"))
                b = mercantile.bounds(x, y, z)
                if b.west < demo[2] and b.east > demo[0] and b.south < demo[3] and b.north > demo[1]:
                    dropped.add(tile)
                else:
                    keep.append(tile)
            (folder / name).write_text("".join(f"{t}\n" for t in keep))
        for tile in dropped:
            for sub in ("images", "labels/color"):
                (folder / sub / f"{tile}.png").unlink(missing_ok=True)
        print(f"{folder}: dropped {len(dropped)} demo-block tiles")
EOF

    # The OAM tiles are few (30 at zoom 19 with imagery, 90 at zoom 20): hard-linked copies weigh
    # them up (zoom 19 six times, zoom 20 three times); merge prefixes the copies' ids.
    rm -rf "$DATA/buildings-train" "$DATA"/oam-*-copy*
    inputs=()
    for zoom_copies in 19:6 20:3; do
        zoom=${zoom_copies%:*}
        for area in area1 area2 area3; do
            inputs+=("$DATA/oam-$area-z$zoom")
            for ((c = 2; c <= ${zoom_copies#*:}; c++)); do
                cp -al "$DATA/oam-$area-z$zoom" "$DATA/oam-$area-z$zoom-copy$c"
                inputs+=("$DATA/oam-$area-z$zoom-copy$c")
            done
        done
    done
    "$PY" -m training.dataset merge "${inputs[@]}" --out "$DATA/buildings-train"
    # Mixed zooms leave the merged zoom null: the model is for zoom-19 tiles. The validation
    # split goes by 2x2 blocks of zoom-19 tiles (each copy and zoom-20 child with its ground):
    # 8x8 blocks would leave four groups for 30 tiles of ground.
    "$PY" - "$DATA/buildings-train" <<'EOF'
import csv
import json
import re
import sys
from pathlib import Path

folder = Path(sys.argv[1])
manifest = json.loads((folder / "manifest.json").read_text())
manifest["zoom"] = 19
(folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
rows = list(csv.DictReader((folder / "scenes.csv").open()))
lines = ["id,scene"]
for r in rows:
    z, x, y = (int(v) for v in re.search(r"(\d+)-(\d+)-(\d+)$", r["id"]).groups())
    lines.append(f"{r['id']},z18-{x >> (z - 18)}-{y >> (z - 18)}")
(folder / "scenes.csv").write_text("\n".join(lines) + "\n")
print(f"{folder}: {manifest['tiles']} tiles, zoom 19, {len({l.split(',')[1] for l in lines[1:]})} blocks")
EOF

    # --- Dubai land cover ------------------------------------------------------------------------
    rm -rf "$DATA/dubai-train" "$DATA/dubai-tile1" "$DATA/dubai-tile7"
    "$PY" -m training.dataset import-masks "$DUBAI" --colors training/classes/dubai.json \
        --scenes tile1,tile2,tile3,tile4,tile6,tile7 --resolution-cm 100 --out "$DATA/dubai-train"
    for scene in tile1 tile7; do  # scored apart: the validation scene and a training scene
        "$PY" -m training.dataset import-masks "$DUBAI" --colors training/classes/dubai.json \
            --scenes $scene --resolution-cm 100 --out "$DATA/dubai-$scene"
    done

    # Never train on a held-out tile (merged copies carry their folder's name before z-x-y).
    "$PY" - "$DATA" <<'EOF'
import sys
from pathlib import Path

data = Path(sys.argv[1])
ids = (data / "buildings-train" / "sample-filtered.txt").read_text().split()
plain = {"-".join(i.split("-")[-3:]) for i in ids}
for name in ("heldout-demo-z19",):  # area3 trains since 2026-12-07 (models/satseg-buildings.md)
    held = set((data / name / "sample-filtered.txt").read_text().split())
    assert not plain & held, f"{name} tiles in the training set: {sorted(plain & held)[:5]}"
dubai = (data / "dubai-train" / "sample-filtered.txt").read_text().split()
scenes = {i.split("-")[0] for i in dubai}
assert scenes == {"tile1", "tile2", "tile3", "tile4", "tile6", "tile7"}, scenes
print(f"checked: {len(ids)} building tiles, none held out; {len(dubai)} Dubai tiles of {len(scenes)} scenes")
EOF
fi

if [[ -n "${STOP_AFTER_DATA:-}" ]]; then
    exit 0
fi

# --- training: the two models side by side, a core each -----------------------------------------
train() {  # train NAME DATASET EXTRA_ARGS...
    local name=$1 data=$2
    shift 2
    mkdir -p "$RUNS/$name"
    local resume=()
    if [[ -f "$RUNS/$name/last.pt" ]]; then
        resume=(--resume)
    elif [[ -n "${INIT:-}" ]]; then
        # A second cosine cycle from the shipped weights, every epoch's weights kept (models/*.md).
        resume=(--init "$MODELS/satseg-$name.pt" --lr 0.001 --max-minutes 90 --snapshots)
    fi
    OMP_NUM_THREADS=1 nice -n 10 "$PY" -m training.train --data "$DATA/$data" --out "$RUNS/$name" \
        --width 0.25 --epochs 400 --optimizer adam --lr 0.002 --schedule cosine --loss ce+dice \
        --batch-size 8 --seed 5 --max-minutes "$MINUTES" "$@" "${resume[@]}" >>"$RUNS/$name/train.log" 2>&1
}
if [[ -z "${SKIP_TRAIN:-}" ]]; then
    pids=()
    if wanted buildings; then
        # The shipped run's length and seed (models/satseg-buildings.md), whatever MINUTES says.
        train buildings buildings-train --color 0.8 --blur 0.3 --scale 0.6,1.6 --validation 0 --seed 8 --max-minutes 110 &
        pids+=($!)
    fi
    if wanted landcover; then
        train landcover dubai-train --color 0.6 --blur 0.2 --scale 0.7,1.4 --validation-scenes tile1 --class-weights median --seed 6 &
        pids+=($!)
    fi
    for pid in "${pids[@]}"; do wait "$pid"; done
    grep -h "^done\|^stopped" "$RUNS"/*/train.log | tail -4
    if [[ -n "${INIT:-}" ]] && wanted landcover; then
        # The mean of the last third of the epochs (rounded up) is the land-cover candidate.
        mapfile -t snaps < <(ls "$RUNS"/landcover/snapshots/epoch-*.pt)
        keep=$(((${#snaps[@]} + 2) / 3))
        "$PY" -m training.average "${snaps[@]: -keep}" --out "$RUNS/landcover/mean.pt"
    fi
fi

# --- export, held-out scores, ship ----------------------------------------------------------------
score() {  # score RUN NAME WEIGHTS FOLDER SETS...: fp32, int8 and the constant baseline per set
    local run=$1 name=$2 weights=$3 folder=$4
    shift 4
    rm -rf "${run:?}/$folder"
    mkdir -p "$run/$folder"
    for set in "$@"; do
        for model in "satseg-$name.onnx" "satseg-$name.int8.onnx"; do
            "$PY" -m training.validate --data "$DATA/$set" --weights "$run/$model" --split all \
                --no-predictions --out "$run/$folder/$set/$model" 2>&1 | tee "$run/$folder/$set-$model.log"
        done
        "$PY" -m scripts.model_release baseline "$weights" "$DATA/$set" --out "$run/$folder/$set/baseline"
    done
    "$PY" -m scripts.heldout_table "$run/$folder" | tee "$run/$folder/tables.md"
}
ship() {  # ship NAME DESCRIPTION FLIPS HELDOUT_SETS... [-- TRAINED_SETS...]
    local name=$1 description=$2 flips=$3  # test-time flips inside the graph (models/*.md measured them)
    shift 3
    local run=$RUNS/$name
    local heldout=() trained=()
    while (($#)) && [[ $1 != -- ]]; do heldout+=("$1"); shift; done
    (($#)) && shift
    trained=("$@")
    local weights
    if [[ -f "$run/mean.pt" ]]; then  # a second cycle's mean of its last epochs (INIT=1)
        weights=$run/mean.pt
    else
        weights=$("$PY" -m scripts.model_release pick "$run")
    fi
    echo "shipping $weights"
    "$PY" -m training.export "$weights" --out "$run/satseg-$name.onnx" --int8 --flips "$flips" \
        --description "$description" 2>&1 | tee "$run/export.log"
    score "$run" "$name" "$weights" heldout "${heldout[@]}"
    # Places the model trained on are scored apart, outside heldout/: the int8 rule below
    # judges held-out sets alone.
    if ((${#trained[@]})); then
        score "$run" "$name" "$weights" trained "${trained[@]}"
    fi
    mkdir -p "$MODELS"
    cp "$run/satseg-$name.onnx" "$MODELS/satseg-$name.onnx"
    "$PY" -m scripts.model_release weights "$weights" "$MODELS/satseg-$name.pt" --flips "$flips"
    # int8 only where it is measured faster (interleaved with fp32) and within 1 point of mIoU everywhere.
    if "$PY" -m scripts.model_release int8-verdict "$run" "satseg-$name" "$DATA/${heldout[0]}" | tee "$run/int8.log"; [[ ${PIPESTATUS[0]} == 0 ]]; then
        cp "$run/satseg-$name.int8.onnx" "$MODELS/satseg-$name-int8.onnx"
    else
        rm -f "$MODELS/satseg-$name-int8.onnx"
    fi
    ls -l "$MODELS"/satseg-"$name"*
}
if wanted buildings; then
    ship buildings "Buildings (building / background) on aerial and drone RGB imagery at zoom 19, about 0.3 m/px; trained on OpenAerialMap tiles of Zanzibar, Kampala and Banepa with OpenStreetMap outlines" 1 \
        heldout-demo-z19 -- heldout-area3-z19  # Banepa trains since 2026-12-07: a training place
fi
if wanted landcover; then
    ship landcover "Land cover (building, land, road, vegetation, water) on satellite RGB imagery at about 1 m/px; trained on the Dubai aerial masks (Humans in the Loop / MBRSC)" 2 \
        dubai-tile1 -- dubai-tile7  # tile1: validation, never trained; tile7 trains since 2026-12-07
fi
