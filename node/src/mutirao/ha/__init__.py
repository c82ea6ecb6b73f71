"""High availability: leases with epochs, replication to a hot standby, fencing."""
