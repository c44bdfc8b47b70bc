from __future__ import annotations

import pytest

from cxrlab.core import ConfigError
from cxrlab.data import LabelMapper, class_names

CASES = [
    ("COVID", "COVID-19", "COVID-19"),
    ("covid-19", "COVID-19", "COVID-19"),
    ("Pneumonia/Viral/COVID-19", "COVID-19", "COVID-19"),
    ("COVID-19, ARDS", "COVID-19", "COVID-19"),
    ("NORMAL", "Normal", "non-COVID"),
    ("No Finding", "Normal", "non-COVID"),
    ("Viral Pneumonia", "Pneumonia", "non-COVID"),
    ("PNEUMONIA", "Pneumonia", "non-COVID"),
    ("Pneumonia/Bacterial/Streptococcus", "Pneumonia", "non-COVID"),
    ("Atelectasis|Pneumonia", "Pneumonia", "non-COVID"),
    ("SARS", "Pneumonia", "non-COVID"),
    ("non-COVID", None, "non-COVID"),
    ("Lung_Opacity", None, None),
    ("Atelectasis", None, None),
    ("todo", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("raw, three, binary", CASES)
def test_label_mapping(raw, three, binary):
    assert LabelMapper("3class").map(raw) == three
    assert LabelMapper("binary").map(raw) == binary


def test_overrides_win_and_can_drop():
    mapper = LabelMapper("3class", {"Lung_Opacity": "Pneumonia", "COVID": None})
    assert mapper.map("lung opacity") == "Pneumonia"
    assert mapper.map("COVID") is None


def test_bad_scheme_and_bad_override_name_the_field():
    with pytest.raises(ConfigError, match="scheme"):
        class_names("4class")
    with pytest.raises(ConfigError, match="label_map"):
        LabelMapper("3class", {"x": "Cancer"})
