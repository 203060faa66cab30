-- chatsync.lua: a Wireshark dissector for chat_sync, newline-delimited UTF-8 JSON.
--
-- Theory of operation
-- -------------------
-- chat_sync speaks one JSON object per line over TCP (port 7420) and one per
-- datagram over UDP (port 7421). This dissector shows each message as a
-- "chatsync" tree with its top-level keys as fields:
--
--   chatsync.type .room .user .text .event .code .field .from .to .epoch   (strings)
--   chatsync.sid  .forgot          (UDP: the session id, and the one a welcome forgot)
--   chatsync.resume                (TCP: a welcome's token, shown again by a join)
--   chatsync.seq  .n  .since  .more                                      (integers)
--   chatsync.id                    (a string or a number, as text)
--   chatsync.history               (true on a replayed broadcast)
--   chatsync.ack.id  .ack.n        (generated on an ack: what it acknowledges)
--   chatsync.other                 ("key: value" for any other key)
--
-- so a field the protocol gains tomorrow still shows up, as chatsync.other,
-- and a key with an unexpected type (a "seq" that is a string) is shown the
-- same way rather than hidden. The Info column sums each message up, ending
-- with its sid, so a UDP capture of several sessions reads session by
-- session. A line that is not a JSON object (bad UTF-8, bad syntax, a
-- duplicate key, nesting deeper than MAX_DEPTH) gets an expert note saying
-- why and where, as the server's "bad_json" error would.
--
-- TCP delivers a stream: one segment may hold several lines, or part of
-- one. The dissector takes every complete line in what TCP hands it and, for
-- an unfinished one, asks for more with desegment_offset and
-- DESEGMENT_ONE_MORE_SEGMENT, so Wireshark reassembles the line across
-- segments. A line that grows past MAX_LINE_BYTES without a newline (the
-- server's limit) is shown as it is instead of being waited for forever.
--
-- Wireshark's Lua has no JSON library, so below is a small scanner: strings
-- with every escape (\uXXXX and surrogate pairs decoded), numbers by the JSON
-- grammar, true/false/null, and nested objects and arrays checked and
-- skipped. It accepts exactly what Python's json module accepts with the
-- server's settings (no NaN or Infinity, no duplicate keys), plus strict
-- UTF-8.
--
-- Use: tshark -X lua_script:$(chat-sync dissector) -r session.pcap
-- or copy this file into Wireshark's personal Lua plugins folder.

local chatsync = Proto("chatsync", "chat_sync chat protocol")

local TCP_PORT = 7420
local UDP_PORT = 7421
local MAX_LINE_BYTES = 64 * 1024
local MAX_DEPTH = 200
local PT_TCP = 2        -- pinfo.port_type of a TCP packet (epan's port_type enum)

local F = {
    type = ProtoField.string("chatsync.type", "Type"),
    room = ProtoField.string("chatsync.room", "Room"),
    user = ProtoField.string("chatsync.user", "User"),
    text = ProtoField.string("chatsync.text", "Text"),
    event = ProtoField.string("chatsync.event", "Event"),
    code = ProtoField.string("chatsync.code", "Error code"),
    field = ProtoField.string("chatsync.field", "Field the error names"),
    from = ProtoField.string("chatsync.from", "Whisper from"),
    to = ProtoField.string("chatsync.to", "Whisper to"),
    epoch = ProtoField.string("chatsync.epoch", "Server run (epoch)"),
    sid = ProtoField.string("chatsync.sid", "Session id"),
    forgot = ProtoField.string("chatsync.forgot", "Session id the server forgot"),
    resume = ProtoField.string("chatsync.resume", "Resume token"),
    seq = ProtoField.int64("chatsync.seq", "Seq"),
    n = ProtoField.int64("chatsync.n", "Stream number (n)"),
    since = ProtoField.int64("chatsync.since", "Replay since seq"),
    more = ProtoField.int64("chatsync.more", "Left out of the list (more)"),
    id = ProtoField.string("chatsync.id", "Request id"),
    history = ProtoField.bool("chatsync.history", "History replay"),
}
local INTEGER_KEYS = { seq = true, n = true, since = true, more = true }
local BOOLEAN_KEYS = { history = true }
-- An ack's id or n, again as the number it acknowledges: "chatsync.ack.n == 3"
-- finds the acks of n 3, where "chatsync.n == 3" finds the datagram too.
local F_ACK = {
    id = ProtoField.int64("chatsync.ack.id", "Acknowledges request id"),
    n = ProtoField.int64("chatsync.ack.n", "Acknowledges stream number"),
}
local f_other = ProtoField.string("chatsync.other", "Other field")
local f_line = ProtoField.string("chatsync.line", "Line")

chatsync.fields = { F.type, F.room, F.user, F.text, F.event, F.code, F.field, F.from, F.to,
                    F.epoch, F.sid, F.forgot, F.resume, F.seq, F.n, F.since, F.more, F.id,
                    F.history, F_ACK.id, F_ACK.n, f_other, f_line }

local ef_bad_json = ProtoExpert.new("chatsync.bad_json", "Not a valid JSON object",
                                    expert.group.MALFORMED, expert.severity.WARN)
local ef_too_long = ProtoExpert.new("chatsync.line_too_long", "Line longer than 64 KiB",
                                    expert.group.MALFORMED, expert.severity.WARN)
local ef_unfinished = ProtoExpert.new("chatsync.unfinished",
                                      "Unfinished line: the rest is in the next segments, and "
                                      .. "TCP reassembly is off (Preferences > Protocols > TCP)",
                                      expert.group.REASSEMBLE, expert.severity.NOTE)
chatsync.experts = { ef_bad_json, ef_too_long, ef_unfinished }

-- -- The JSON scanner ------------------------------------------------------------
-- Every function takes the text and a 1-based position, and returns the
-- position after what it read, or raises a table {why, at} that parse() turns
-- into nil, why, at.

local function fail(why, at)
    error({ why = why, at = at }, 0)
end

local function skip_space(s, i)
    local _, last = s:find("^[ \t\r\n]*", i)
    return last + 1
end

local function utf8_char(code)
    if code < 0x80 then
        return string.char(code)
    elseif code < 0x800 then
        return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
    elseif code < 0x10000 then
        return string.char(0xE0 + math.floor(code / 0x1000),
                           0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
    end
    return string.char(0xF0 + math.floor(code / 0x40000), 0x80 + math.floor(code / 0x1000) % 0x40,
                       0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
                  n = "\n", r = "\r", t = "\t" }

local function hex4(s, i)
    local digits = s:match("^%x%x%x%x", i)
    if not digits then fail("bad \\u escape", i) end
    return tonumber(digits, 16)
end

-- A string starting at the quote at i: its decoded text, and the position after it.
local function scan_string(s, i)
    local parts = {}
    local j = i + 1
    while true do
        local k = s:find('[\0-\31"\\]', j)
        if not k then fail("unterminated string", i) end
        parts[#parts + 1] = s:sub(j, k - 1)
        local c = s:sub(k, k)
        if c == '"' then
            return table.concat(parts), k + 1
        elseif c ~= "\\" then
            fail("control character in string", k)
        end
        local e = s:sub(k + 1, k + 1)
        if ESCAPES[e] then
            parts[#parts + 1] = ESCAPES[e]
            j = k + 2
        elseif e == "u" then
            local code = hex4(s, k + 2)
            j = k + 6
            if code >= 0xD800 and code <= 0xDBFF and s:sub(j, j + 1) == "\\u" then
                local low = hex4(s, j + 2)
                if low >= 0xDC00 and low <= 0xDFFF then
                    code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
                    j = j + 6
                end
            end
            -- A lone surrogate is valid JSON (Python accepts it); show U+FFFD.
            if code >= 0xD800 and code <= 0xDFFF then code = 0xFFFD end
            parts[#parts + 1] = utf8_char(code)
        else
            fail("bad escape", k)
        end
    end
end

local function scan_number(s, i)
    local _, last = s:find("^-?%d+", i)
    if not last then fail("expected a value", i) end
    local int = s:sub(i, last)
    if int:match("^-?0%d") then fail("leading zero in number", i) end
    local j = last + 1
    local kind = "integer"
    if s:sub(j, j) == "." then
        local _, frac = s:find("^%d+", j + 1)
        if not frac then fail("expected a digit after '.'", j + 1) end
        j, kind = frac + 1, "number"
    end
    if s:find("^[eE]", j) then
        local _, exp = s:find("^[+-]?%d+", j + 1)
        if not exp then fail("expected an exponent", j + 1) end
        j, kind = exp + 1, "number"
    end
    return kind, j
end

local scan_value

-- An object starting at the brace at i: its members {key, kind, value, first, last}.
local function scan_object(s, i, depth)
    local members, seen = {}, {}
    local j = skip_space(s, i + 1)
    if s:sub(j, j) == "}" then return members, j + 1 end
    while true do
        if s:sub(j, j) ~= '"' then fail("expected a key in double quotes", j) end
        local key
        key, j = scan_string(s, j)
        if seen[key] then fail("duplicate key " .. string.format("%q", key), j) end
        seen[key] = true
        j = skip_space(s, j)
        if s:sub(j, j) ~= ":" then fail("expected ':'", j) end
        local first = skip_space(s, j + 1)
        local kind, value
        kind, value, j = scan_value(s, first, depth + 1)
        members[#members + 1] = { key = key, kind = kind, value = value, first = first,
                                  last = j - 1 }
        j = skip_space(s, j)
        local c = s:sub(j, j)
        if c == "}" then return members, j + 1 end
        if c ~= "," then fail("expected ',' or '}'", j) end
        j = skip_space(s, j + 1)
    end
end

local function scan_array(s, i, depth)
    local j = skip_space(s, i + 1)
    if s:sub(j, j) == "]" then return j + 1 end
    while true do
        local _
        _, _, j = scan_value(s, j, depth + 1)
        j = skip_space(s, j)
        local c = s:sub(j, j)
        if c == "]" then return j + 1 end
        if c ~= "," then fail("expected ',' or ']'", j) end
        j = skip_space(s, j + 1)
    end
end

-- Any value at i: its kind, its value (decoded for a string, the text of a
-- number or literal, the members of an object) and the position after it.
scan_value = function(s, i, depth)
    if depth > MAX_DEPTH then fail("nested too deeply", i) end
    local c = s:sub(i, i)
    if c == '"' then
        local text, j = scan_string(s, i)
        return "string", text, j
    elseif c == "{" then
        local members, j = scan_object(s, i, depth)
        return "object", members, j
    elseif c == "[" then
        local j = scan_array(s, i, depth)
        return "array", nil, j
    end
    for _, word in ipairs({ "true", "false", "null" }) do
        if s:sub(i, i + #word - 1) == word then return word, word, i + #word end
    end
    local kind, j = scan_number(s, i)
    return kind, s:sub(i, j - 1), j
end

-- Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF), as
-- Python's decoder: returns nil, or the 1-based position of the first bad byte.
local function bad_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local k = s:find("[\128-\255]", i)
        if not k then return nil end
        local c = s:byte(k)
        local need, low, high
        if c >= 0xC2 and c <= 0xDF then need, low, high = 1, 0x80, 0xBF
        elseif c == 0xE0 then need, low, high = 2, 0xA0, 0xBF
        elseif c == 0xED then need, low, high = 2, 0x80, 0x9F
        elseif c >= 0xE1 and c <= 0xEF then need, low, high = 2, 0x80, 0xBF
        elseif c == 0xF0 then need, low, high = 3, 0x90, 0xBF
        elseif c >= 0xF1 and c <= 0xF3 then need, low, high = 3, 0x80, 0xBF
        elseif c == 0xF4 then need, low, high = 3, 0x80, 0x8F
        else return k end
        local second = s:byte(k + 1)
        if not second or second < low or second > high then return k end
        for m = 2, need do
            local b = s:byte(k + m)
            if not b or b < 0x80 or b > 0xBF then return k end
        end
        i = k + need + 1
    end
    return nil
end

-- The members of the JSON object s, or nil, why, at (a 1-based position).
local function parse(s)
    local at = bad_utf8(s)
    if at then return nil, "invalid UTF-8", at end
    local ok, kind, members, j = pcall(function()
        local first = skip_space(s, 1)
        if s:sub(first, first) ~= "{" then fail("expected a JSON object", first) end
        return scan_value(s, first, 1)
    end)
    if not ok then
        if type(kind) == "table" then return nil, kind.why, kind.at end
        error(kind, 0)          -- a bug in this file: let Wireshark show it
    end
    j = skip_space(s, j)
    if j <= #s then return nil, "extra data after the object", j end
    return members
end

-- -- The tree ---------------------------------------------------------------------
local function add_member(tree, range, m)
    local field = F[m.key]
    local short_integer = m.kind == "integer" and #m.value <= 15
    if field and INTEGER_KEYS[m.key] and short_integer then
        tree:add(field, range, Int64.new(tonumber(m.value)))
    elseif field and BOOLEAN_KEYS[m.key] and (m.kind == "true" or m.kind == "false") then
        tree:add(field, range, m.kind == "true")
    elseif field and m.kind == "string" and not INTEGER_KEYS[m.key] and not BOOLEAN_KEYS[m.key] then
        tree:add(field, range, m.value)
    elseif field and m.key == "id" and (m.kind == "integer" or m.kind == "number") then
        tree:add(field, range, m.value)
    else
        -- Unknown keys, and known ones with an unexpected type: the JSON as sent.
        local item = tree:add(f_other, range, m.key .. ": " .. range:raw())
        item:set_text(m.key .. ": " .. range:raw())
    end
end

-- What an ack acknowledges: its integer id (a request) or n (the server's stream).
local function add_acked(tree, range, m)
    if F_ACK[m.key] and m.kind == "integer" and #m.value <= 15 then
        tree:add(F_ACK[m.key], range, Int64.new(tonumber(m.value))):set_generated()
    end
end

local function summary(values)
    local parts = { values.type or "?" }
    if values.type == "system" and values.event then parts[#parts + 1] = values.event end
    if values.history == "true" then parts[#parts + 1] = "(history)" end
    if values.room then parts[#parts + 1] = "[" .. values.room .. "]" end
    if values.user then parts[#parts + 1] = values.user .. (values.text and ":" or "") end
    if values.text then
        local text = values.text
        if #text > 40 then text = text:sub(1, 40) .. "..." end
        parts[#parts + 1] = string.format("%q", text):gsub("\\\n", "\\n")
    end
    if values.code then parts[#parts + 1] = values.code end
    for _, key in ipairs({ "id", "n", "seq", "since", "more", "forgot", "sid" }) do
        if values[key] then parts[#parts + 1] = key .. "=" .. values[key] end
    end
    return table.concat(parts, " ")
end

-- One message: the tvb range of its bytes, without the newline. Returns a
-- short summary for the Info column.
local function dissect_message(range, tree)
    local s = range:raw()
    local item = tree:add(chatsync, range)
    local members, why, at = parse(s)
    if not members then
        item:add(f_line, range, s)
        item:add_proto_expert_info(ef_bad_json, "Not a valid JSON object: " .. why
                                   .. " at byte " .. at)
        item:append_text(" (not JSON)")
        return "[not JSON]"
    end
    local values = {}
    local is_ack = false
    for _, m in ipairs(members) do
        if m.key == "type" and m.kind == "string" and m.value == "ack" then is_ack = true end
    end
    for _, m in ipairs(members) do
        local member = range:range(m.first - 1, m.last - m.first + 1)
        add_member(item, member, m)
        if is_ack then add_acked(item, member, m) end
        if m.kind == "string" or m.kind == "integer" or m.kind == "true" then
            values[m.key] = m.value
        end
    end
    local text = summary(values)
    item:append_text(": " .. text)
    return text
end

-- -- Framing ------------------------------------------------------------------------
local function set_columns(pinfo, infos)
    pinfo.cols.protocol = "CHATSYNC"
    pinfo.cols.info = table.concat(infos, ", ")
end

-- Every complete line in tvb; asks TCP for more where the last one is unfinished.
local function dissect_stream(tvb, pinfo, tree)
    local length = tvb:len()
    local s = tvb:raw(0, length)
    local offset = 0                              -- 0-based, as tvb ranges count
    local infos = {}
    while offset < length do
        local newline = s:find("\n", offset + 1, true)   -- 1-based index of "\n"
        if not newline then
            local too_long = length - offset > MAX_LINE_BYTES
            if not too_long and pinfo.can_desegment > 0 then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
                break
            end
            local item = tree:add(chatsync, tvb(offset))
            item:add_proto_expert_info(too_long and ef_too_long or ef_unfinished)
            infos[#infos + 1] = too_long and "[line too long]" or "[part of a line]"
            break
        end
        local line_end = newline - 1                   -- 0-based offset of "\n"
        local stop = line_end
        if stop > offset and s:byte(stop) == 13 then stop = stop - 1 end   -- CRLF
        if stop > offset then
            infos[#infos + 1] = dissect_message(tvb(offset, stop - offset), tree)
        end
        offset = line_end + 1
    end
    if #infos > 0 then set_columns(pinfo, infos) end
    return length
end

local function dissect_datagram(tvb, pinfo, tree)
    if tvb:len() == 0 then return 0 end
    set_columns(pinfo, { dissect_message(tvb(), tree) })
    return tvb:len()
end

function chatsync.dissector(tvb, pinfo, tree)
    if pinfo.port_type == PT_TCP then
        return dissect_stream(tvb, pinfo, tree)
    end
    return dissect_datagram(tvb, pinfo, tree)
end

-- -- Finding chat_sync on other ports -------------------------------------------
-- A chat_sync message is a JSON object with a "type" string, wherever the
-- key is. A datagram that parses so is taken; so is a TCP stream whose first
-- line does (or, if the segment ends before the line does, that starts as an
-- object and names "type"). A TCP conversation once taken stays ours.
local function is_message(s)
    local members = parse(s)
    if not members then return false end
    for _, m in ipairs(members) do
        if m.key == "type" and m.kind == "string" then return true end
    end
    return false
end

local function heuristic_tcp(tvb, pinfo, tree)
    local s = tvb:raw()
    if not s:find('^[ \t]*{[ \t]*"') then return false end
    local newline = s:find("\n", 1, true)
    if newline then
        if not is_message(s:sub(1, newline - 1)) then return false end
    elseif not s:find('"type"[ \t]*:[ \t]*"') then
        return false
    end
    pinfo.conversation = chatsync
    dissect_stream(tvb, pinfo, tree)
    return true
end

local function heuristic_udp(tvb, pinfo, tree)
    local s = tvb:raw()
    if not s:find('^[ \t\r\n]*{') or not is_message(s) then return false end
    dissect_datagram(tvb, pinfo, tree)
    return true
end

DissectorTable.get("tcp.port"):add(TCP_PORT, chatsync)
DissectorTable.get("udp.port"):add(UDP_PORT, chatsync)
chatsync:register_heuristic("tcp", heuristic_tcp)
chatsync:register_heuristic("udp", heuristic_udp)
