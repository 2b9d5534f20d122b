"""A plugin whose dependency is missing: fw lists it as broken and keeps working."""
import fw_dependency_that_is_not_installed  # noqa: F401  (the point of this example)
