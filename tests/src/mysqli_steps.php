<?php
// A scripted session of several PHP mysqli (mysqlnd) clients, for tests that compare the
// proxy with the server. The job comes as JSON on stdin; each step prints what the client
// got, one line per item, as "<step> c<client> <item>". The commands it exercises are the
// ones other test clients never send: cursors (COM_STMT_FETCH), parameter data in pieces
// (COM_STMT_SEND_LONG_DATA) and statement resets (COM_STMT_RESET).
mysqli_report(MYSQLI_REPORT_OFF);
$job = json_decode(stream_get_contents(STDIN), true);

$conns = [];
for ($i = 0; $i < $job["clients"]; $i++) {
    $m = mysqli_init();
    if (!@$m->real_connect($job["host"], $job["user"], $job["password"], $job["database"], $job["port"])) {
        fwrite(STDERR, "connect: " . mysqli_connect_errno() . " " . mysqli_connect_error() . "\n");
        exit(1);
    }
    $conns[] = $m;
}

function show($v) { return json_encode($v, JSON_INVALID_UTF8_SUBSTITUTE | JSON_PRESERVE_ZERO_FRACTION); }
function err($o) { return "ERR {$o->errno} {$o->sqlstate} {$o->error}"; }
function status($m) {
    return "affected {$m->affected_rows} id {$m->insert_id} warnings {$m->warning_count} info " . show($m->info);
}
function fields($result) { return show(array_map(fn($f) => [$f->name, $f->type], $result->fetch_fields())); }

// Up to $n rows of statement $s, whose results are bound to $row; "end" after the last.
function fetch_rows($s, &$row, $n) {
    $out = [];
    for ($i = 0; $i < $n; $i++) {
        $got = $s->fetch();
        if ($got === null) { $out[] = "end"; break; }
        if ($got === false) { $out[] = err($s); break; }
        $out[] = "row " . show(array_values($row));
    }
    return $out;
}

$stmts = []; $cursor = []; $params = []; $rows = [];
foreach ($job["steps"] as $n => $step) {
    [$kind, $c] = $step;
    $m = $conns[$c];
    $name = $step[2] ?? null;
    $out = [];
    switch ($kind) {
    case "query": // sql: every result set
        if (!$m->multi_query($step[2])) { $out[] = err($m); break; }
        while (true) {
            $r = $m->store_result();
            if ($r) {
                $out[] = "fields " . fields($r) . " rows " . show($r->fetch_all());
                $r->free();
            } elseif ($m->errno) {
                $out[] = err($m);
            }
            $out[] = status($m);
            if (!$m->more_results()) break;
            if (!$m->next_result()) { $out[] = err($m); break; }
        }
        break;
    case "prepare": // name, sql, rows per fetch through a read-only cursor (0: no cursor)
        $s = $m->stmt_init();
        if (!$s->prepare($step[3])) { $out[] = err($s); break; }
        if ($step[4] > 0) {
            $s->attr_set(MYSQLI_STMT_ATTR_CURSOR_TYPE, MYSQLI_CURSOR_TYPE_READ_ONLY);
            $s->attr_set(MYSQLI_STMT_ATTR_PREFETCH_ROWS, $step[4]);
        }
        $out[] = "params {$s->param_count} fields {$s->field_count}";
        $stmts[$name] = $s;
        $cursor[$name] = $step[4] > 0;
        break;
    case "bind": // name, types, values
    case "execute": // name, types ("": as bound before), values; rows unless through a cursor
        $s = $stmts[$name];
        if ($step[3] !== "") {
            $params[$name] = $step[4];
            $refs = [];
            foreach ($params[$name] as $k => $_) $refs[] = &$params[$name][$k];
            if (!$s->bind_param($step[3], ...$refs)) { $out[] = err($s); break; }
        }
        if ($kind == "bind") { $out[] = "bound"; break; }
        if (!$s->execute()) { $out[] = err($s); break; }
        while (true) {
            $out[] = status($m);
            $meta = $s->result_metadata();
            if ($meta) {
                $out[] = "fields " . fields($meta);
                $rows[$name] = array_fill(0, $s->field_count, null);
                $refs = [];
                foreach ($rows[$name] as $k => $_) $refs[] = &$rows[$name][$k];
                $s->bind_result(...$refs);
                if ($cursor[$name]) break;
                $out = array_merge($out, fetch_rows($s, $rows[$name], PHP_INT_MAX));
            }
            // A procedure's result sets, then its status.
            if (!$s->more_results()) break;
            if (!$s->next_result()) { $out[] = err($s); break; }
        }
        break;
    case "fetch": // name, rows
        $out = fetch_rows($stmts[$name], $rows[$name], $step[3]);
        break;
    case "select_db": // schema, by COM_INIT_DB
        $out[] = $m->select_db($step[2]) ? "selected" : err($m);
        break;
    case "change_user": // schema; the job's user and password
        $out[] = $m->change_user($job["user"], $job["password"], $step[2]) ? "changed" : err($m);
        break;
    case "ping":
        $out[] = $m->ping() ? "pong" : err($m);
        break;
    case "long": // name, parameter, data
        $out[] = $stmts[$name]->send_long_data($step[3], $step[4]) ? "sent" : err($stmts[$name]);
        break;
    case "reset":
        $out[] = $stmts[$name]->reset() ? "reset" : err($stmts[$name]);
        break;
    case "close":
        $out[] = $stmts[$name]->close() ? "closed" : "close failed";
        unset($stmts[$name]);
        break;
    default:
        fwrite(STDERR, "unknown step $kind\n");
        exit(1);
    }
    foreach ($out as $line) echo "$n c$c $line\n";
}
foreach ($conns as $m) $m->close();
