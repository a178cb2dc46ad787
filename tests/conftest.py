"""Settings for the whole suite."""

from hypothesis import settings

# The machines this runs on are shared and noisy (ENVIRONMENT.md): a
# per-example deadline fails property tests for the load of other
# processes, not for anything the code does. Speed is measured in bench/.
settings.register_profile("bootsvc", deadline=None)
settings.load_profile("bootsvc")
