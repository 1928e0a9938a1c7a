"""ticketflow: inbound support email to helpdesk tickets, as a Bytewax dataflow."""
