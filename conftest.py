"""The repository's pytest set-up: the llmgate plugin (`harness.options`).

An installed llmgate has pytest load the plugin through its `pytest11` entry point, before this
file; registering the module a second time would fail, so it is registered here only when that
has not happened (llmgate not installed, or `-p no:llmgate`).
"""


def pytest_addhooks(pluginmanager):  # the first hook pytest calls on a conftest
    import harness.options

    if not pluginmanager.is_registered(harness.options):
        pluginmanager.register(harness.options, "harness.options")
