"""Reports on top of the fit library: analysis drivers, figures, the HTML sweep report."""
