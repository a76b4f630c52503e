"""`--help` of every command renders (argparse %-formats help strings, so a stray % breaks it), documents
every option, and states a default at most once."""

import argparse

from t2i.cli import build_parser


def all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, path + (name,))


def test_every_command_help_renders_and_documents_every_option():
    parsers = dict(all_parsers(build_parser()))
    assert {("train", "dalle"), ("train", "vqgan"), ("train", "autoencoder"), ("train", "bpe"), ("data", "coco"),
            ("train", "ldm"), ("convert", "compvis-ldm"),
            ("generate",)} <= parsers.keys()
    for path, parser in parsers.items():
        text = parser.format_help()
        assert "(default: None)" not in text, f"t2i {' '.join(path)} --help shows a default of None"
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"t2i {' '.join(path)} {action.option_strings[0]} has no help"
                assert action.option_strings[-1] in text
            if action.help and "(default" in action.help:  # says its default itself: not shown again
                assert parser._get_formatter()._get_help_string(action) == action.help
