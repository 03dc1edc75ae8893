"""Shared test helpers (not tests): ``tests.support.emulator`` runs the Encord emulator as a subprocess."""
