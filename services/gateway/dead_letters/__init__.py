"""Dead letters for admins: reading `downlink:dead` and re-driving a letter's work."""
