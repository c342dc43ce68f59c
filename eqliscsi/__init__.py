"""eqliscsi: OpenNebula storage driver for Dell EqualLogic PS Series groups."""
