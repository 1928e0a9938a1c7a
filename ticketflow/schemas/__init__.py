"""JSON Schemas of ticketflow's records."""
