#![no_main]
dormouse_fuzz::target!(sql);
