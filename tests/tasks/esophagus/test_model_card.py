"""The nn-TransEC model card's tables."""

from __future__ import annotations

from engine.tasks.esophagus.model_card import dice_table



def test_model_card_dice_table_writes_unscored_structures_as_n_a():
    """A structure absent from the held-out fold has no Dice (NaN, or no entry): "n/a", never "nan"."""
    rows = dice_table({"fullres": {"dice": 0.9, "dice_EC": float("nan"), "dice_aorta": 0.95},
                            "lowres": {"dice": 0.8, "dice_aorta": 0.875}, "classifier": {"auc": 0.9}})
    assert rows[2] == "| stage | mean | EC | aorta |"
    assert rows[4:] == ["| fullres | 0.900 | n/a | 0.950 |", "| lowres | 0.800 | n/a | 0.875 |", ""]
