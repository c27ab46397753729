"""What qsens concludes from a results folder: fits stored beside the cells, the effect tables, the README claims.

    fit.py     fit the stored cells and store the fits (`qsens fit`, `qsens nightly`)
    effect.py  the overtraining effect as Markdown tables with paired checks (`qsens report`)
    claims.py  the README's findings block, derived from the published database (`qsens report --claims`)
"""
