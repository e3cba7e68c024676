-- json_spec.lua -- moonq.json from Lua: lossless numbers, null, [] vs {},
-- errors that name the path, and decode failures as nil, message.

require "moonq" -- registers moonq.json in package.preload
local json = require "moonq.json"

local function bits(x) return string.pack("<d", x) end

describe("moonq.json", function()
  describe("integers", function()
    for _, text in ipairs { "9007199254740993", "-9223372036854775808",
                            "9223372036854775807", "12345678901234567", "0" } do
      it("keeps " .. text .. " an exact integer", function()
        local v = json.decode(text)
        assert.equal("integer", math.type(v))
        assert.equal(text, tostring(v))
        assert.equal(text, json.encode(v))
      end)
    end

    it("encodes math.mininteger and math.maxinteger exactly", function()
      assert.equal("-9223372036854775808", json.encode(math.mininteger))
      assert.equal("9223372036854775807", json.encode(math.maxinteger))
    end)

    it("turns integer literals outside int64 into floats", function()
      assert.equal("float", math.type(json.decode("9223372036854775808")))
      assert.equal("float", math.type(json.decode("-9223372036854775809")))
    end)

    it("decodes -0 as integer 0", function()
      local v = json.decode("-0")
      assert.equal("integer", math.type(v))
      assert.equal(0, v)
    end)
  end)

  describe("floats", function()
    local cases = {
      { 0.1, "0.1" }, { 1e-300, "1e-300" },
      { 1.7976931348623157e308, "1.7976931348623157e+308" },
      { 1.0, "1.0" }, { -0.0, "-0.0" }, { 0.1 + 0.2, "0.30000000000000004" },
    }
    for _, case in ipairs(cases) do
      local x, text = case[1], case[2]
      it("round-trips " .. text .. " bit-exactly", function()
        assert.equal(text, json.encode(x))
        local back = json.decode(json.encode(x))
        assert.equal("float", math.type(back))
        assert.equal(bits(x), bits(back))
      end)
    end

    it("keeps the integer/float distinction inside containers", function()
      local v = json.decode('{"i": 2, "f": 2.0, "a": [1, 1.5, 3e0]}')
      assert.equal("integer", math.type(v.i))
      assert.equal("float", math.type(v.f))
      assert.equal("integer", math.type(v.a[1]))
      assert.equal("float", math.type(v.a[3]))
      assert.equal('{"a":[1,1.5,3.0],"f":2.0,"i":2}', json.encode(v))
    end)

    it("decodes -0.0 as negative zero", function()
      local v = json.decode("-0.0")
      assert.equal("float", math.type(v))
      assert.equal(-math.huge, 1 / v)
    end)

    it("rejects NaN and infinities", function()
      assert.has_error(function() json.encode(0 / 0) end,
        "json.encode: value: cannot encode NaN")
      assert.has_error(function() json.encode({ x = math.huge }) end,
        "json.encode: value.x: cannot encode an infinite number")
    end)

    it("reports a number overflowing a double", function()
      local v, err = json.decode("[1, 1e400]")
      assert.is_nil(v)
      assert.equal("number beyond a 64-bit float's range (1.7976931348623157e308) at byte 4", err)
    end)
  end)

  describe("strings", function()
    it("passes UTF-8 through", function()
      local s = "héllo ✓ 😀"
      assert.equal('"' .. s .. '"', json.encode(s))
      assert.equal(s, json.decode(json.encode(s)))
    end)

    it("decodes \\u escapes and surrogate pairs to UTF-8", function()
      assert.equal("é😀", json.decode('"\\u00e9\\ud83d\\ude00"'))
    end)

    it("escapes control characters, quotes and backslashes", function()
      assert.equal('"a\\n\\t\\u0001\\"\\\\"', json.encode('a\n\t\1"\\'))
      assert.equal('a\n\t\1"\\', json.decode(json.encode('a\n\t\1"\\')))
    end)

    it("rejects invalid UTF-8 naming the path", function()
      assert.has_error(function() json.encode({ name = "ok\xff" }) end,
        "json.encode: value.name: string is not valid UTF-8 (byte 2)")
    end)
  end)

  describe("null", function()
    it("is the same value as cjson.null", function()
      local ok, cjson = pcall(require, "cjson")
      if not ok then
        pending("lua-cjson is not installed")
        return
      end
      assert.equal(cjson.null, json.null)
    end)

    it("round-trips both ways", function()
      assert.equal(json.null, json.decode("null"))
      local v = json.decode('{"a": null, "b": [null]}')
      assert.equal(json.null, v.a)
      assert.equal(json.null, v.b[1])
      assert.equal('{"a":null,"b":[null]}', json.encode(v))
    end)
  end)

  describe("tables", function()
    it("round-trips {} and []", function()
      assert.equal("{}", json.encode(json.decode("{}")))
      assert.equal("[]", json.encode(json.decode("[]")))
      assert.equal('{"a":[],"b":{}}', json.encode(json.decode('{"a":[],"b":{}}')))
      assert.equal(json.array_mt, getmetatable(json.decode("[]")))
    end)

    it("marks tables as arrays with json.array", function()
      assert.equal("[]", json.encode(json.array()))
      local t = {}
      assert.equal(t, json.array(t))
      assert.equal("[]", json.encode(t))
      assert.equal("{}", json.encode({}))
    end)

    it("keeps object keys strings and sorts them", function()
      local v = json.decode('{"b": 1, "1": 2, "a": 3}')
      assert.equal(2, v["1"])
      assert.is_nil(v[1])
      assert.equal('{"1":2,"a":3,"b":1}', json.encode(v))
    end)

    it("rejects nesting deeper than 128", function()
      local function nest(n)
        local t = {}
        for _ = 2, n do t = { t } end
        return t
      end
      assert.is_string(json.encode(nest(128)))
      assert.has_error(function() json.encode(nest(129)) end)
      assert.is_table(json.decode(("["):rep(128) .. ("]"):rep(128)))
      local v, err = json.decode(("["):rep(129) .. ("]"):rep(129))
      assert.is_nil(v)
      assert.equal("JSON nested deeper than 128 levels at byte 128", err)
    end)

    it("rejects cycles", function()
      local t = {}
      t.self = t
      assert.has_error(function() json.encode(t) end,
        "json.encode: value.self: cannot encode a reference cycle")
    end)

    it("names the path of a value it cannot encode", function()
      assert.has_error(function() json.encode({ a = { 1, print } }) end,
        "json.encode: value.a[2]: cannot encode a function")
    end)

    it("rejects mixed and sparse tables", function()
      assert.has_error(function() json.encode({ 1, x = 2 }) end,
        "json.encode: value: cannot encode a table mixing array and object keys")
      assert.has_error(function() json.encode({ 1, 2, nil, 4 }) end,
        "json.encode: value: array has a hole at [3]")
      assert.has_error(function() json.encode({ [1.5] = true }) end,
        "json.encode: value: cannot encode a table with a float key")
    end)
  end)

  describe("decode errors", function()
    local cases = {
      { "[1,2,]", "invalid JSON at byte 5: trailing comma" },
      { "hello", "invalid JSON at byte 0: unexpected character 'h'" },
      { '"abc', "invalid JSON at byte 0: unterminated string" },
      { '"\\ud800"', "invalid JSON at byte 1: lone surrogate" },
      { "[1] x", "invalid JSON at byte 4: unexpected text after the value" },
      { '{"items": [1, 2] "x"}', "invalid JSON at byte 17: expected ',' or '}'" },
    }
    for _, case in ipairs(cases) do
      it("returns nil, message for " .. case[1], function()
        local v, err = json.decode(case[1])
        assert.is_nil(v)
        assert.equal(case[2], err)
      end)
    end

    it("raises for a non-string argument", function()
      assert.has_error(function() json.decode({}) end)
    end)
  end)

  it("round-trips a 1 MB array", function()
    local big = {}
    for i = 1, 150000 do
      big[i] = i % 3 == 0 and ("item-" .. i) or i % 3 == 1 and i * 7 or i / 8
    end
    local text = json.encode(big)
    assert.is_true(#text > 1000000)
    local back = json.decode(text)
    assert.equal(#big, #back)
    for i = 1, #big do
      if back[i] ~= big[i] or math.type(back[i]) ~= math.type(big[i]) then
        error("element " .. i .. " differs")
      end
    end
    assert.equal(text, json.encode(back))
  end)
end)
