"""The admin of environments, herds, DR pairs and drills: validates, confirms and queues.

Importing the package registers its ModelAdmins (Django's admin autodiscovery imports it).
"""

from herds.admin import herds  # noqa: F401
