#![no_main]
dormouse_fuzz::target!(mysql_handshake);
