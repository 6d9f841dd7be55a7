# /etc/elephaas/local_settings.py: this controller's settings that need Python.
#
# ElepHaaS's settings run this file last, in their own namespace, after reading the
# environment (/etc/elephaas/elephaas.env): anything assigned here wins, and existing
# settings can be changed in place. Most controllers need nothing here. Examples:
#
# The fencing command per environment, run on the controller when an old primary's
# server does not answer (values: {hostname} {port} {herd} {environment} {instance},
# each one argument; "*" for every other environment). It runs as the elephaas user,
# under NoNewPrivileges: it cannot use sudo or other setuid programs.
# FENCE_COMMANDS = {"prod": ["/usr/local/sbin/ipmi-off", "--host", "{hostname}"]}
#
# Single instance commands instead of the preset's:
# COMMANDS = {"start": ["sudo", "systemctl", "start", "postgresql@{version}-{cluster}"]}
#
# The audit log (logins, refusals, jobs) at INFO on its own:
# LOGGING["loggers"]["elephaas.audit"] = {"handlers": ["console"], "level": "INFO"}
#
# The full list, with every environment variable, is in
# /usr/share/doc/elephaas/local_settings.example.py.
