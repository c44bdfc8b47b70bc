"""Reference label figures of the public collections, counted on their released label tables (as
torchxrayvision ships them) by code of its own, not through cxrlab's readers: per collection and
finding, the images and the share of them where the finding is present. ``cxrlab manifest`` flags a
finding whose share differs from these (``cxrlab.data.label_report``).

    python bench/label_references.py   # writes src/cxrlab/data/collections/label_references.csv
"""

from __future__ import annotations

import ast
import importlib.util
import zipfile
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "src" / "cxrlab" / "data" / "collections" / "label_references.csv"
NIH = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
       "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
CHEXPERT = {"Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum", "Cardiomegaly": "Cardiomegaly",
            "Lung Opacity": "Lung Opacity", "Lung Lesion": "Lung Lesion", "Edema": "Edema",
            "Consolidation": "Consolidation", "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis",
            "Pneumothorax": "Pneumothorax", "Pleural Effusion": "Effusion", "Pleural Other": "Pleural Other",
            "Fracture": "Fracture", "Support Devices": "Support Devices"}
VINDR = {"Cardiomegaly": "Cardiomegaly", "Pleural thickening": "Pleural Thickening",
         "Pulmonary fibrosis": "Fibrosis", "Lung Opacity": "Lung Opacity", "Pleural effusion": "Effusion",
         "Infiltration": "Infiltration", "Consolidation": "Consolidation", "Atelectasis": "Atelectasis",
         "Pneumothorax": "Pneumothorax"}


def tables() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def rows(source: str, finding: str, images: int, positive: int, counted_on: str) -> dict:
    return {"source": source, "finding": finding, "images": images, "positive": positive,
            "share": round(positive / images, 5), "counted_on": counted_on}


def nih(data: Path) -> list[dict]:
    table = pd.read_csv(data / "Data_Entry_2017_v2020.csv.gz")
    words = table["Finding Labels"].str.split("|")
    return [rows("nih", f.replace("_", " "), len(table), int(words.map(lambda w, f=f: f in w).sum()),
                 "Data_Entry_2017_v2020.csv, every image") for f in NIH]


def chexpert(data: Path) -> list[dict]:
    table = pd.read_csv(data / "chexpert_train.csv.gz")
    frontal = table[table["Frontal/Lateral"] == "Frontal"]
    return [rows("chexpert", name, len(frontal), int((frontal[column] == 1).sum()),
                 "train.csv, frontal images; uncertain and blank not positive") for column, name in CHEXPERT.items()]


def padchest(data: Path) -> list[dict]:
    table = pd.read_csv(data / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", usecols=["Projection", "Labels"])
    labels = table["Labels"].fillna("").map(lambda t: {str(w).strip().lower() for w in ast.literal_eval(t)} - {""}
                                            if t.startswith("[") else set())
    keep = table["Projection"].isin(["PA", "AP", "AP_horizontal"]) & labels.map(bool) & ~labels.map(lambda s: "exclude" in s)
    labels = labels[keep]
    rules = pd.read_csv(OUT.parent / "padchest_findings.csv")
    counts = rules[rules["relation"] == "counts"]
    return [rows("padchest", finding, len(labels),
                 int(labels.map(lambda s, names=set(part["label"].str.lower()): bool(s & names)).sum()),
                 "the 160K table, frontal images with labels; sub-types by padchest_findings.csv")
            for finding, part in counts.groupby("finding")]


def rsna(data: Path) -> list[dict]:
    with zipfile.ZipFile(data / "kaggle_stage_2_train_labels.csv.zip") as z:
        boxes = pd.read_csv(z.open(z.namelist()[0]))
    target = boxes.groupby("patientId")["Target"].max()
    return [rows("rsna", "Pneumonia", len(target), int(target.sum()), "stage_2_train_labels.csv, one image a patient")]


def vindr(data: Path) -> list[dict]:
    table = pd.read_csv(data / "vinbigdata-train.csv.gz")
    images = table["image_id"].nunique()
    reported = table.groupby("class_name")["image_id"].nunique()
    return [rows("vindr", name, images, int(reported.get(column, 0)), "train.csv (Kaggle), any radiologist")
            for column, name in VINDR.items()]


def main() -> None:
    data = tables()
    frame = pd.DataFrame([r for read in (nih, chexpert, padchest, rsna, vindr) for r in read(data)])
    frame.sort_values(["source", "finding"]).to_csv(OUT, index=False)
    print(f"wrote {OUT}: {len(frame)} figures")


if __name__ == "__main__":
    main()
