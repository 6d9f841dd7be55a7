"""A real PostgreSQL fleet on one machine: the lab (see ../shared/DESIGN.md, "The lab")."""
