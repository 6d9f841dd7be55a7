"""The admin of servers, instances and jobs: validates, confirms and queues; no I/O.

Importing the package registers its ModelAdmins (Django's admin autodiscovery imports it).
"""

from instances.admin import audit, campaigns, inventory, jobs, settings_view  # noqa: F401
