-- busted output handler: busted's TAP, plus a "# file PATH" line as each spec
-- file starts, so spec/run can report progress file by file.
return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.TAP"(options)
  busted.subscribe({"file", "start"}, function(file)
    io.write("# file ", file.name, "\n")
    io.flush()
    return nil, true
  end)
  return handler
end
