"""Figures and the HTML report of the universality analysis.

  figures, html, sections   the report's figures, its HTML page and the pipeline's sections
  cards                     a card per focus neuron (contexts, histogram, logit effects)
  views                     threshold-free views of universality
  browser                   every neuron's record, static search pages and the bulk export

May import: ucore.jobs, ucore.models, ucore.data, ucore.analyses.

  from ucore.report import write_report
  html_path = write_report(out_dir, {"small-a": neuron_table}, partner_layers={"small-a": hist})
"""
from ucore.report.figures import (REQUIRED_COLUMNS, check_table, corr_distributions,
                                  max_vs_min, partner_layer_heatmap,
                                  partner_layer_hist_from_table, partner_layer_shares,
                                  per_layer_stats, persistence,
                                  training_curves, universal_by_layer)
from ucore.report.html import Section, table_summary, top_universal_html, write_report

__all__ = ["REQUIRED_COLUMNS", "Section", "check_table", "corr_distributions", "max_vs_min",
           "partner_layer_heatmap", "partner_layer_hist_from_table", "partner_layer_shares",
           "per_layer_stats", "persistence", "table_summary",
           "top_universal_html", "training_curves", "universal_by_layer", "write_report"]
