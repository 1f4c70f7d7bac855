"""The console entry points: both apps list their commands; model commands print and fail clearly."""

from typer.testing import CliRunner

from parcae_scaling.cli import sweep_app
from parcae_scaling.fit_cli import fit_app

runner = CliRunner()


def test_both_apps_list_their_commands():
    sweep_help = runner.invoke(sweep_app, ["--help"])
    fit_help = runner.invoke(fit_app, ["--help"])
    assert sweep_help.exit_code == 0 and fit_help.exit_code == 0
    for command in ("plan", "launch", "status", "resume", "cancel", "train-one", "configs", "flops"):
        assert command in sweep_help.output
    for command in ("isoflop", "parametric", "test-time", "frontier", "report"):
        assert command in fit_help.output


def test_flops_prints_both_conventions_and_tokens_for_a_budget():
    result = runner.invoke(sweep_app, ["flops", "parcae-small-140m", "--budget", "1e18"])
    assert result.exit_code == 0
    assert "reference: 1,359,902,976 FLOPs/token (mu_rec=8, mu_bwd=4)" in result.output
    assert "tokens for 1e+18 FLOPs: 735,346,578" in result.output
    assert "exact:" in result.output


def test_configs_lists_published_sizes_with_exact_counts():
    result = runner.invoke(sweep_app, ["configs", "--contains", "xlarge"], terminal_width=200)
    assert result.exit_code == 0
    assert "1,338,591,744" in result.output and "1,333,868,544" in result.output


def test_bad_model_inputs_exit_1_with_a_one_line_reason():
    bad_mu = runner.invoke(sweep_app, ["flops", "parcae-tiny-64", "--mu-rec", "0"])
    assert bad_mu.exit_code == 1 and "ModelConfig.mu_rec" in bad_mu.output


def test_a_wrong_choice_is_a_usage_error_naming_the_choices():
    cases = [(sweep_app, ["configs", "--convention", "6nd"], "'6nd' is not one of 'reference', 'exact'"),
             (sweep_app, ["launch", "--backend", "slurm"], "'slurm' is not one of 'local', 'ray', 'submitit'"),
             (fit_app, ["parametric", "--law", "tt_exp"], "'tt_exp' is not one of 'parcae', 'chinchilla'")]
    for app, args, message in cases:
        result = runner.invoke(app, args)
        text = " ".join(result.output.replace("│", " ").split())  # Typer's error box wraps the line
        assert result.exit_code == 2 and message in text, result.output
