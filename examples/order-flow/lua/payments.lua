-- payments: a fake card gateway for the example (an app's own module:
-- moonq puts the app's lua/ directory on the Lua path, for `moonq run`
-- and `moonq test` alike). Stripe's test card numbers behave as there:
--   4242 4242 4242 4242   charged
--   4000 0000 0000 0002   declined
--   4000 0000 0000 0119   a processing error on the first attempt, then charged
local M = {}

local function digits(card) return (tostring(card or ""):gsub("%D", "")) end

-- Charges `amount` (cents) to `card`; returns the charge id, or nil and
-- why the card was declined. Raises when the gateway fails (worth a retry).
function M.charge(card, amount, order_id, attempt)
  local number = digits(card)
  if number == "4000000000000119" and attempt == 1 then
    error("payment gateway: processing error, try again")
  end
  if number == "4000000000000002" then
    return nil, "card_declined"
  end
  if #number ~= 16 then
    return nil, "invalid_number"
  end
  return ("ch_%s_%d"):format(order_id, amount)
end

return M
