"""What an operator runs beside the stream: status, held changes (quarantine, dead letters), replay."""
