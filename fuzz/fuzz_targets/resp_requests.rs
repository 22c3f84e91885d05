#![no_main]
dormouse_fuzz::target!(resp_requests);
